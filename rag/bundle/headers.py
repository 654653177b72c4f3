"""Raw tar header checks that run before Python's ``tarfile`` parses a header.

``tarfile`` reads a PAX extended header or a GNU long name whole into memory (a 1 MB bundle
can declare a 400 MB one), and before Python 3.11.10 / 3.12.6 its PAX parser backtracks
quadratically on crafted records (CVE-2024-6232). :class:`HeaderGuard` sits between the
(decompressed) byte stream and ``tarfile``: it walks the 512-byte blocks itself, and before
it hands a header's bytes on it checks the header's type, its declared size (64 KiB at most
for PAX records and GNU long names), the PAX record syntax (strict ``LEN KEY=VALUE\\n``,
linear time, no long digit runs) and the member count. Member data passes through in
blocks, untouched; nothing is read twice.

:func:`open_stream` detects gzip/bzip2/xz by magic number and decompresses as a stream, so
the guard always sees the tar bytes themselves.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import re
import tarfile
from typing import IO, cast

from rag.errors import IntegrityError

BLOCK = tarfile.BLOCKSIZE
#: the most bytes a PAX extended header or GNU long name/link may declare
MAX_EXTENDED_BYTES = 64 * 1024
#: headers in one bundle (members plus their extended headers)
MAX_HEADERS = 200_000
#: extended headers (PAX 'x' or GNU 'L'/'K') that may precede one member
MAX_EXTENDED_CHAIN = 3
#: longest run of digits allowed inside PAX records (the CVE-2024-6232 pattern is a long one)
MAX_DIGIT_RUN = 24
_PASS_CHUNK = 1 << 20

_EXTENDED = {b"x", b"L", b"K"}
# Types tarfile would treat specially before any of our member checks could run.
_REFUSED = {
    b"g": "a global PAX header",
    b"S": "a GNU sparse member",
    b"M": "a GNU multi-volume member",
    b"V": "a GNU volume header",
    b"X": "a Solaris extended header",
}
_PAX_KEY = re.compile(rb"[A-Za-z0-9._-]{1,64}")
_DIGIT_RUN = re.compile(rb"[0-9]{%d,}" % (MAX_DIGIT_RUN + 1))
_MAGICS: tuple[tuple[bytes, str], ...] = ((b"\x1f\x8b", "gz"), (b"BZh", "bz2"), (b"\xfd7zXZ\x00", "xz"))


def _refuse(what: str) -> IntegrityError:
    return IntegrityError(f"{what}; the bundle is crafted or damaged, refusing it before reading further")


def _number(field: bytes, what: str) -> int:
    """A tar numeric field: octal text, or GNU base-256 when the top bit is set."""
    if field[:1] in (b"\x80", b"\xff"):
        value = int.from_bytes(field[1:], "big")
        if field[:1] == b"\xff":
            value -= 1 << (8 * (len(field) - 1))
        if value < 0:
            raise _refuse(f"a tar header declares a negative {what}")
        return value
    text = field.split(b"\x00", 1)[0].strip(b" \x00")
    if not text:
        return 0
    if not re.fullmatch(rb"[0-7]+", text):
        raise _refuse(f"a tar header has an unreadable {what} field")
    return int(text, 8)


def _check_sum(block: bytes) -> None:
    stored = _number(block[148:156], "checksum")
    unsigned = sum(block[:148]) + 8 * 0x20 + sum(block[156:])
    signed = unsigned - 256 * sum(1 for b in block[:148] + block[156:] if b >= 0x80)  # old tars sum signed bytes
    if stored not in (unsigned, signed):
        raise _refuse("a tar header fails its checksum")


def check_pax_records(data: bytes) -> dict[bytes, bytes]:
    """Parse PAX records strictly, in linear time; refuse anything tarfile might choke on."""
    payload = data.rstrip(b"\x00")
    if _DIGIT_RUN.search(payload):
        raise _refuse(f"a PAX header holds a run of more than {MAX_DIGIT_RUN} digits (the CVE-2024-6232 pattern)")
    records: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(payload):
        space = payload.find(b" ", pos, pos + 21)
        if space <= pos or not payload[pos:space].isdigit():
            raise _refuse("a PAX header record has no valid length prefix")
        length = int(payload[pos:space])
        end = pos + length
        if length <= space - pos + 3 or end > len(payload) or payload[end - 1:end] != b"\n":
            raise _refuse("a PAX header record's length does not match its text")
        key, sep, value = payload[space + 1:end - 1].partition(b"=")
        if not sep or not _PAX_KEY.fullmatch(key):
            raise _refuse("a PAX header record has no valid KEY=VALUE")
        if key.startswith(b"GNU.sparse"):
            raise _refuse("a PAX header describes a GNU sparse file")
        if key in records:
            raise _refuse(f"a PAX header repeats the key {key.decode('ascii')!r}")
        records[key] = value
        pos = end
    return records


class HeaderGuard:
    """A read-only stream over tar bytes that checks each raw header before passing it on."""

    def __init__(self, upstream: IO[bytes]):
        self._up = upstream
        self._out = bytearray()
        self._data_left = 0  # bytes of the current member's (padded) data still to pass through
        self._headers = 0
        self._chain = 0
        self._pending_size: int | None = None  # a PAX 'size' record for the next member
        self._ended = False
        self.offset = 0  # tar bytes consumed from upstream

    def _pull(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            part = self._up.read(n - len(data))
            if not part:
                break
            data += part
        self.offset += len(data)
        return data

    def _step(self) -> bool:
        """Move one unit (a header, its extended payload, or a data chunk) into the buffer."""
        if self._ended:
            data = self._pull(_PASS_CHUNK)
            self._out += data
            return bool(data)
        if self._data_left:
            data = self._pull(min(self._data_left, _PASS_CHUNK))
            self._data_left -= len(data)
            self._out += data
            return bool(data)
        block = self._pull(BLOCK)
        self._out += block
        if len(block) < BLOCK:
            return bool(block)  # truncated: tarfile reports it
        if block == bytes(BLOCK):
            self._ended = True  # end of archive; what follows is tarfile's and the caller's business
            return True
        self._header(block)
        return True

    def _header(self, block: bytes) -> None:
        self._headers += 1
        if self._headers > MAX_HEADERS:
            raise _refuse(f"the bundle has more than {MAX_HEADERS} tar headers")
        _check_sum(block)
        kind = block[156:157]
        size = _number(block[124:136], "size")
        if kind in _REFUSED:
            raise _refuse(f"the bundle holds {_REFUSED[kind]}")
        if kind in _EXTENDED:
            self._chain += 1
            if self._chain > MAX_EXTENDED_CHAIN:
                raise _refuse(f"more than {MAX_EXTENDED_CHAIN} extended headers precede one tar member")
            if size > MAX_EXTENDED_BYTES:
                raise _refuse(
                    f"a tar extended header declares {size} bytes (the limit is {MAX_EXTENDED_BYTES})"
                )
            payload = self._pull(-(-size // BLOCK) * BLOCK)
            if len(payload) < size:
                self._out += payload
                return  # truncated: tarfile reports it
            if kind == b"x":
                records = check_pax_records(payload[:size])
                if b"size" in records:
                    if not records[b"size"].isdigit():
                        raise _refuse("a PAX header gives a non-numeric size")
                    self._pending_size = int(records[b"size"])
            self._out += payload
            return
        self._chain = 0
        if self._pending_size is not None:
            size, self._pending_size = self._pending_size, None
        # Directories, links and devices carry no data in tarfile's reading (other types do).
        if kind not in (b"1", b"2", b"3", b"4", b"5", b"6"):
            self._data_left = -(-size // BLOCK) * BLOCK

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            while self._step():
                pass
            data = bytes(self._out)
            self._out.clear()
            return data
        while len(self._out) < n and self._step():
            pass
        data = bytes(self._out[:n])
        del self._out[:n]
        return data


class _Peeked:
    """A stream with its first bytes already read (for the magic-number check)."""

    def __init__(self, head: bytes, rest: IO[bytes]):
        self._head = head
        self._rest = rest

    def read(self, n: int = -1) -> bytes:
        if self._head:
            if n is None or n < 0:
                data, self._head = self._head + self._rest.read(), b""
                return data
            data, self._head = self._head[:n], self._head[n:]
            return data
        return self._rest.read(n)


def open_stream(fileobj: IO[bytes]) -> tarfile.TarFile:
    """``tarfile`` in stream mode over the guarded, decompressed bytes of ``fileobj``."""
    head = fileobj.read(6)
    src = cast(IO[bytes], _Peeked(head, fileobj))
    for magic, kind in _MAGICS:
        if head.startswith(magic):
            if kind == "gz":
                src = cast(IO[bytes], gzip.GzipFile(fileobj=src, mode="rb"))
            elif kind == "bz2":
                src = cast(IO[bytes], bz2.BZ2File(src, mode="rb"))
            else:
                src = cast(IO[bytes], lzma.LZMAFile(src, mode="rb"))  # noqa: SIM115 - lives as long as the tar stream
            break
    return tarfile.open(fileobj=cast(IO[bytes], HeaderGuard(src)), mode="r|")
