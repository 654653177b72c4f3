"""Crash-safe JSONL: one fsync'ed line per row, torn last lines repaired on resume."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from rag.fsutil import atomic_write


def repair_jsonl(path: Path) -> int:
    """Drop a torn (unterminated or unparsable) tail so appends start on a clean line.

    A kill can leave half a row at the end; every complete line before it is kept. Returns the
    number of bytes removed.
    """
    if not path.exists():
        return 0
    data = path.read_bytes()
    keep = len(data)
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
    # the last complete line must parse too (a crash between write and newline is impossible,
    # but a partially flushed multi-block write could end in a newline inside JSON text)
    while keep > 0:
        start = data.rfind(b"\n", 0, keep - 1) + 1
        line = data[start:keep].strip()
        try:
            if line:
                json.loads(line)
            break
        except ValueError:
            keep = start
    if keep != len(data):
        with open(path, "r+b") as f:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
    return len(data) - keep


def read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue  # only a torn tail can be bad, and repair_jsonl removes it first
    return rows


def remove_rows(path: Path, ids: set[str]) -> int:
    """Rewrite ``path`` without the rows whose ``meta.id`` is in ``ids`` (atomic: temp + rename).

    Returns how many rows were removed; the file is untouched when there are none.
    """
    if not ids or not path.exists():
        return 0
    kept: list[bytes] = []
    removed = 0
    with open(path, "rb") as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            if isinstance(row, dict) and isinstance(row.get("meta"), dict) and row["meta"].get("id") in ids:
                removed += 1
            else:
                kept.append(line)
    if removed:
        atomic_write(path, b"".join(kept))
    return removed


class JsonlAppender:
    """Append rows one at a time; each is on disk (fsync) before the call returns."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._f = open(path, "a", encoding="utf-8")  # noqa: SIM115 - held open for the run
        self._lock = threading.Lock()  # appends may come from worker threads (fsync off the event loop)

    def append(self, row: dict[str, Any]) -> None:
        line = json.dumps(row, ensure_ascii=False, sort_keys=False) + "\n"
        with self._lock:
            self._f.write(line)
            self._f.flush()
            os.fsync(self._f.fileno())

    def close(self) -> None:
        with self._lock:  # an append in flight on a worker thread finishes first
            if not self._f.closed:
                self._f.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
