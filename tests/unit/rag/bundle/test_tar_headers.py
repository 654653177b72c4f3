"""Raw tar header checks (rag.bundle.headers): hostile headers are refused before tarfile
parses them, reading only the header itself; normal PAX bundles still pass.

Every hostile tar is built here from raw 512-byte blocks. "Fast" is asserted as bytes read
from the file at the moment of refusal (deterministic), never as a wall-clock limit; the
timings and peak RSS are in benchmarks/bundle_hostile.py.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from rag.bundle import headers as H
from rag.bundle import install_bundle, verify_bundle
from rag.errors import IntegrityError

BLOCK = 512


def raw_header(name: str, kind: bytes, size: int) -> bytes:
    """A ustar header block with a valid checksum and any declared size (nothing allocated)."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = 0
    block = bytearray(info.tobuf(format=tarfile.USTAR_FORMAT))
    block[124:136] = b"%011o\x00" % size
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\x00 " % sum(block)
    return bytes(block)


def pax_record(key: str, value: bytes) -> bytes:
    body = b" " + key.encode() + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n += 1
    return str(n).encode() + body


def pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % BLOCK)


END = b"\0" * (2 * BLOCK)


class Counting(io.BytesIO):
    """Counts the bytes the reader pulled from the 'file'."""

    def __init__(self, data: bytes):
        super().__init__(data)
        self.consumed = 0

    def read(self, n: int | None = -1) -> bytes:
        data = super().read(n)
        self.consumed += len(data)
        return data


def huge_pax(size: int = 400_000_000, sent: int = 1 << 20) -> bytes:
    """A PAX header declaring ``size`` bytes, followed by only ``sent`` bytes (it lies)."""
    return raw_header("././@PaxHeader", tarfile.XHDTYPE, size) + b"1" * sent


def cve_2024_6232(n: int = 60_000) -> bytes:
    """A well-formed, under-the-cap PAX header whose value is one long run of digits: the
    input on which tarfile's 'hdrcharset' search backtracks quadratically before 3.11.10."""
    payload = pax_record("comment", b"1" * n)
    return raw_header("././@PaxHeader", tarfile.XHDTYPE, len(payload)) + pad(payload) + END


def _refused(data: bytes, match: str) -> Counting:
    src = Counting(data)
    with pytest.raises(IntegrityError, match=match):
        verify_bundle(src)
    return src


def test_400mb_pax_header_refused_after_reading_its_header_only() -> None:
    src = _refused(huge_pax(), "declares 400000000 bytes")
    assert src.consumed <= 2 * 10240  # tarfile's first record read, not the 1 MB that follows


@pytest.mark.parametrize("pack", [gzip.compress, bz2.compress, lzma.compress], ids=["gz", "bz2", "xz"])
def test_400mb_pax_header_refused_inside_compressed_bundles(pack: Callable[[bytes], bytes]) -> None:
    data = pack(huge_pax(sent=8 << 20))
    src = _refused(data, "declares 400000000 bytes")
    # the decompressor reads ahead a little; it never inflates the whole 8 MB stream
    assert src.consumed < len(data) or len(data) < 256 << 10


def test_gnu_long_name_and_link_capped() -> None:
    for kind in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK):
        _refused(raw_header("././@LongLink", kind, 400_000_000) + b"a" * 4096, "declares 400000000 bytes")


def test_cve_2024_6232_pattern_refused() -> None:
    _refused(cve_2024_6232(), "CVE-2024-6232")


def test_cve_pattern_also_refused_in_a_bundle_on_disk_and_nothing_installed(tmp_path: Path) -> None:
    bundle = tmp_path / "evil.tar.gz"
    bundle.write_bytes(gzip.compress(cve_2024_6232()))
    area = tmp_path / "area"
    area.mkdir()
    (area / "keep.txt").write_text("mine")
    with pytest.raises(IntegrityError, match="CVE-2024-6232"):
        install_bundle(bundle, area / "dest")
    assert sorted(p.name for p in area.iterdir()) == ["keep.txt"]


@pytest.mark.parametrize(
    ("records", "match"),
    [
        (b"abc comment=x\n", "no valid length prefix"),
        (b"99 comment=x\n", "length does not match"),
        (b"12 commentx\n", "no valid KEY=VALUE"),
        (pax_record("GNU.sparse.map", b"0,1"), "GNU sparse"),
        (pax_record("path", b"a") + pax_record("path", b"b"), "repeats the key"),
        (pax_record("we ird", b"x"), "KEY=VALUE"),
    ],
)
def test_malformed_pax_records_refused(records: bytes, match: str) -> None:
    _refused(raw_header("././@PaxHeader", tarfile.XHDTYPE, len(records)) + pad(records) + END, match)


@pytest.mark.parametrize(("kind", "what"), [(b"g", "global PAX"), (b"S", "sparse"), (b"V", "volume"),
                                            (b"M", "multi-volume")])
def test_types_tarfile_would_process_first_are_refused(kind: bytes, what: str) -> None:
    _refused(raw_header("x", kind, 0) + END, what)


def test_chain_of_extended_headers_refused() -> None:
    rec = pax_record("comment", b"x")
    one = raw_header("././@PaxHeader", tarfile.XHDTYPE, len(rec)) + pad(rec)
    _refused(one * (H.MAX_EXTENDED_CHAIN + 1) + raw_header("f", tarfile.REGTYPE, 0) + END, "extended headers precede")


def test_bad_checksum_and_unreadable_size_refused() -> None:
    block = bytearray(raw_header("f", tarfile.REGTYPE, 0))
    block[0:1] = b"g"  # name changed after the checksum was computed
    _refused(bytes(block) + END, "checksum")
    block = bytearray(raw_header("f", tarfile.REGTYPE, 0))
    block[124:136] = b"9" * 11 + b"\0"
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\x00 " % sum(block)
    _refused(bytes(block) + END, "unreadable size")


def test_member_count_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(H, "MAX_HEADERS", 50)
    data = b"".join(raw_header(f"f{i}", tarfile.REGTYPE, 0) for i in range(51)) + END
    with H.open_stream(io.BytesIO(data)) as tf, pytest.raises(IntegrityError, match="more than 50 tar headers"):
        for _ in tf:  # verify stops at the first non-manifest member; iterate to reach the cap
            pass


def test_pax_size_record_is_followed_to_the_next_header() -> None:
    """The guard tracks member boundaries as tarfile does (a PAX 'size' overrides ustar's)."""
    rec = pax_record("size", b"700")
    data = (raw_header("././@PaxHeader", tarfile.XHDTYPE, len(rec)) + pad(rec)
            + raw_header("a.bin", tarfile.REGTYPE, 0) + pad(b"z" * 700)
            + raw_header("b.txt", tarfile.REGTYPE, 2) + pad(b"hi") + END)
    with H.open_stream(io.BytesIO(data)) as tf:
        got = [(m.name, tf.extractfile(m).read()) for m in tf]  # type: ignore[union-attr]
    assert got == [("a.bin", b"z" * 700), ("b.txt", b"hi")]


def test_ordinary_pax_tar_passes_unchanged(tmp_path: Path) -> None:
    buf = io.BytesIO()
    members = {"über-" * 40 + ".txt": b"long unicode name", "index/x.bin": bytes(range(256)) * 9, "empty": b""}
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
        d = tarfile.TarInfo("dir")
        d.type = tarfile.DIRTYPE
        tf.addfile(d)
    for data in (buf.getvalue(), gzip.compress(buf.getvalue())):
        with H.open_stream(io.BytesIO(data)) as tf:
            got = {m.name: tf.extractfile(m).read() for m in tf if m.isreg()}  # type: ignore[union-attr]
        assert got == members
