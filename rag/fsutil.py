"""Small file helpers with one home each: sha256 of a file and the atomic write.

The atomic write is the one way raftsmith replaces a file: write a temporary sibling, fsync
it, rename it over the target, fsync the folder. A crash leaves the old file or the new one,
never half of either, and a failed write leaves no temporary file behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = ["BLOCK", "atomic_path", "atomic_write", "file_digest", "sha256_file"]

BLOCK = 1 << 20  # read in 1 MiB blocks: GGUFs and bundles can be many GB


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(BLOCK), b""):
            h.update(block)
    return h.hexdigest()


_DIGESTS: dict[tuple[str, int, float], str] = {}
_DIGEST_LOCK = threading.Lock()


def file_digest(path: Path, known: str | None = None) -> str:
    """sha256 of a file as "sha256:<hex>"; cached per (path, size, mtime); trusts a manifest value."""
    if known:
        return known if known.startswith("sha256:") else f"sha256:{known}"
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime)
    with _DIGEST_LOCK:
        if key in _DIGESTS:
            return _DIGESTS[key]
    digest = f"sha256:{sha256_file(path)}"
    with _DIGEST_LOCK:
        _DIGESTS[key] = digest
    return digest


def _fsync_replace(tmp: Path, final: Path) -> None:
    """fsync ``tmp``, rename it over ``final``, fsync the folder: a crash leaves old or new."""
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    with contextlib.suppress(OSError):
        dfd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside ``final`` for any writer (a tar stream, FAISS, llama.cpp).

    When the block ends without an error the file there replaces ``final`` atomically;
    otherwise it is removed and ``final`` is left as it was.
    """
    target = Path(final)
    # Not mkstemp: its 0600 mode would outlive the rename; the writer creates the file.
    tmp = target.with_name(f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        _fsync_replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike[str], data: str | bytes) -> None:
    """Replace ``path`` with ``data`` (text is written as UTF-8) atomically."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(path) as tmp:
        tmp.write_bytes(raw)
