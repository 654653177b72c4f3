"""Bounded reads of regular files.

A FIFO, socket or device named ``notes.md`` would block a plain ``read_bytes()`` forever (while
ingest holds the index lock) or never end; only regular files are read. The file is opened
non-blocking and checked again on the open descriptor (it may have been swapped after the
walk), and at most ``max_bytes + 1`` bytes are read, so a file that grows while it is read
cannot push memory past the limit either.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from rag.errors import IngestError
from rag.ingest.parsers import SkipFile

_KIND = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
         (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder"))


def _not_regular(mode: int) -> SkipFile:
    what = next((name for test, name in _KIND if test(mode)), None)
    return SkipFile(f"not a regular file{' but ' + what if what else ''}; only regular files are ingested")


def too_large(size: int, max_bytes: int) -> SkipFile:
    return SkipFile(f"larger than corpus.max_file_mb ({size / 1e6:.1f} MB > {max_bytes / 1e6:.1f} MB)")


def read_regular(path: Path, max_bytes: int) -> tuple[bytes, os.stat_result]:
    """(bytes, stat) of the regular file ``path``; SkipFile for anything else or anything larger
    than ``max_bytes``, IngestError when it cannot be read."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(st.st_mode)
        if st.st_size > max_bytes:
            raise too_large(st.st_size, max_bytes)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise _not_regular(st.st_mode)
            data = f.read(max_bytes + 1)
    except OSError as err:
        raise IngestError(f"cannot read: {err.strerror or err}") from None
    if len(data) > max_bytes:
        raise SkipFile(f"larger than corpus.max_file_mb (grew past {max_bytes / 1e6:.1f} MB while being read)")
    return data, st
