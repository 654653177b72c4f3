"""Reading side of a bundle: verify, and the streaming, checking walk that install uses.

``walk`` reads a tar as a stream (plain or gzip, a file or a BytesIO), checks every member's
name, type, size and sha256 against the manifest and hands the bytes to an optional sink,
which is how ``install`` writes them. A damaged or crafted bundle raises IntegrityError
naming the first problem; nothing it wrote counts until the walk ends cleanly.
"""

from __future__ import annotations

import contextlib
import hashlib
import lzma
import os
import tarfile
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from rag.bundle.headers import open_stream
from rag.bundle.manifest import BundleManifest, ManifestEntry, unseal_manifest
from rag.bundle.members import (
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    check_member_name,
    check_member_type,
    fold_key,
)
from rag.bundle.reports import VerifyReport
from rag.config import STATE_DIR
from rag.errors import ConfigError, IntegrityError
from rag.fsutil import BLOCK
from rag.progress import Progress, counter

STATE_MANIFEST = f"{STATE_DIR}/bundle-manifest.json"

# Called for each file member once its header checks out; returns where its bytes go.
Sink = Callable[[tarfile.TarInfo, ManifestEntry, BundleManifest], "IO[bytes] | None"]


@contextlib.contextmanager
def _readable_tar() -> Iterator[None]:
    """What tarfile, gzip or the disk raise becomes the IntegrityError that names the damage."""
    try:
        yield
    except IntegrityError:
        raise
    except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError, ValueError) as err:
        raise IntegrityError(
            f"the bundle is not a readable tar ({type(err).__name__}: {err}); it is truncated or damaged"
        ) from None


def walk(fileobj: IO[bytes], sink: Sink | None, advance: Callable[[int], None]) -> tuple[BundleManifest, int]:
    """Stream every member, checking names, types, sizes and hashes against the manifest."""
    with _readable_tar(), open_stream(fileobj) as tf:
        first = tf.next()
        if first is None or first.name != MANIFEST_NAME or not first.isreg():
            raise IntegrityError("the bundle does not start with manifest.json; it is not a raftsmith bundle or is damaged")
        if first.size > MAX_MANIFEST_BYTES:
            raise IntegrityError("the bundle manifest is implausibly large; the bundle is damaged")
        manifest = unseal_manifest(_read_exact(tf, first, first.size))
        dirs = {p.rsplit("/", i)[0] for p in manifest.entries for i in range(1, p.count("/") + 1)}
        seen: set[str] = set()
        folded: set[str] = {fold_key(MANIFEST_NAME)}
        total = 0
        # Not "for m in tf": in stream mode that re-yields the members already read.
        while (m := tf.next()) is not None:
            check_member_name(m.name)
            check_member_type(m)
            name = m.name.rstrip("/")
            if fold_key(name) in folded:
                raise IntegrityError(f"bundle member {ascii(name)} appears twice (or differs only in case)")
            folded.add(fold_key(name))
            if m.isdir():
                if name not in dirs:
                    raise IntegrityError(f"bundle folder {ascii(name)} is not in the manifest (extra member)")
                continue
            entry = manifest.entries.get(name)
            if entry is None:
                raise IntegrityError(f"bundle member {ascii(name)} is not in the manifest (extra or renamed member)")
            if m.size != entry.size:
                raise IntegrityError(
                    f"bundle member {ascii(name)} claims {m.size} bytes, the manifest says {entry.size} (size lie)"
                )
            out = sink(m, entry, manifest) if sink is not None else None
            try:
                digest, count = _stream_member(tf, m, out, advance)
            finally:
                if out is not None:
                    out.close()
            if count != entry.size:
                raise IntegrityError(f"bundle member {ascii(name)} holds {count} bytes, the manifest says {entry.size}")
            if digest != entry.sha256:
                raise IntegrityError(
                    f"bundle member {ascii(name)} does not match its sha256 in the manifest; the bundle is damaged"
                )
            seen.add(name)
            total += count
    missing = sorted(set(manifest.entries) - seen)
    if missing:
        raise IntegrityError(f"bundle member {ascii(missing[0])} is listed in the manifest but missing ({len(missing)} missing)")
    return manifest, total


def read_manifest(src: Path) -> BundleManifest:
    """Only the (sealed, checked) manifest: the first member, read without touching the rest."""
    with open(src, "rb") as f, _readable_tar(), open_stream(f) as tf:
        first = tf.next()
        if first is None or first.name != MANIFEST_NAME or not first.isreg() or first.size > MAX_MANIFEST_BYTES:
            raise IntegrityError("the bundle does not start with manifest.json; it is not a raftsmith bundle or is damaged")
        return unseal_manifest(_read_exact(tf, first, first.size))


def _read_exact(tf: tarfile.TarFile, m: tarfile.TarInfo, size: int) -> bytes:
    f = tf.extractfile(m)
    assert f is not None
    data = f.read(size + 1)
    if len(data) != size:
        raise IntegrityError(f"bundle member {ascii(m.name)} is truncated")
    return data


def _stream_member(tf: tarfile.TarFile, m: tarfile.TarInfo, out: IO[bytes] | None,
                   advance: Callable[[int], None]) -> tuple[str, int]:
    f = tf.extractfile(m)
    assert f is not None
    h, count = hashlib.sha256(), 0
    for block in iter(lambda: f.read(BLOCK), b""):
        h.update(block)
        count += len(block)
        if out is not None:
            out.write(block)
        advance(len(block))
    return h.hexdigest(), count


class WholeFileHash:
    """Hashes the bundle file itself as tarfile streams it (digest, signature, audit record)."""

    def __init__(self, f: IO[bytes]):
        self._f = f
        self.sha = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self.sha.update(data)
        return data

    def finish(self) -> str:
        """Read what tarfile left (end-of-archive blocks, padding) and return the file's sha256."""
        while self.read(BLOCK):
            pass
        return self.sha.hexdigest()


def walk_hashed(fileobj: IO[bytes], sink: Sink | None, advance: Callable[[int], None]) -> tuple[BundleManifest, int, str]:
    """``walk``, plus the sha256 of every byte of ``fileobj`` (one read)."""
    f = WholeFileHash(fileobj)
    manifest, total = walk(f, sink, advance)  # type: ignore[arg-type]
    return manifest, total, f.finish()


def verify_bundle(path: str | os.PathLike[str] | IO[bytes], progress: Progress | None = None, *,
                  expect_digest: str | None = None, check_signature: str | None = None,
                  signature: str | os.PathLike[str] | None = None) -> VerifyReport:
    """Check every member against the manifest; raise IntegrityError naming the first problem.

    ``expect_digest`` (the sha256 'bundle create' printed) and ``check_signature`` (a keyring
    key name; the HMAC in ``<bundle>.sig`` or ``signature``) tie the file to its maker.
    """
    from rag.bundle import provenance

    t0 = time.perf_counter()
    if expect_digest is not None:
        provenance.normalize_digest(expect_digest)  # a typo fails before the long read
    if not isinstance(path, (str, os.PathLike)):
        manifest, total, digest = walk_hashed(path, None, lambda n: None)
        shown, bundle_path = "<stream>", None
    else:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"Bundle {p} does not exist; pass the path of a .tar made by 'raftsmith bundle create'.")
        with open(p, "rb") as f:
            manifest, total, digest = walk_hashed(f, None, counter(progress, p.stat().st_size, "verifying"))
        shown, bundle_path = str(p), p
    provenance.check_digest(digest, expect_digest)
    signed = provenance.check_signature(bundle_path, digest, check_signature, signature)
    return VerifyReport(shown, len(manifest.entries), total, round(time.perf_counter() - t0, 3), manifest.export_name,
                        manifest.created_at, manifest.raftsmith_version, manifest.embedding_included,
                        sha256=digest, signed_by=signed.key_name if signed else None)
