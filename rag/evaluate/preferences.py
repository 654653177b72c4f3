"""Human preference marks from the page's arena: one JSONL line per mark, and their summary.

``raftsmith ui``'s arena asks base and tuned the same question side by side; the user marks
which answer is better, or that both are wrong. Each mark is appended (fsynced) to
``.raftsmith/arena.jsonl`` in the workspace, and ``raftsmith eval`` summarises the file as the
human-preference row.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rag.config import Workspace
from rag.errors import ConfigError

__all__ = ["CHOICES", "PreferenceSummary", "append_mark", "marks_path", "summarize_marks"]

CHOICES = ("base", "tuned", "both_wrong")
MARKS_NAME = "arena.jsonl"


def marks_path(ws: Workspace) -> Path:
    return ws.state_dir / MARKS_NAME


@dataclass
class PreferenceSummary:
    path: str
    marks: int
    base: int
    tuned: int
    both_wrong: int
    unreadable: int  # lines that are not a mark (damaged, or written by something else)

    @property
    def tuned_win_rate(self) -> float | None:
        """Share of decided marks (one answer better) that went to tuned."""
        decided = self.base + self.tuned
        return round(self.tuned / decided, 4) if decided else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"tuned_win_rate": self.tuned_win_rate}

    def line(self) -> str:
        rate = "-" if self.tuned_win_rate is None else f"{self.tuned_win_rate:.2f}"
        text = (f"Human preference (arena, {self.marks} marks): tuned better {self.tuned}, base better {self.base}, "
                f"both wrong {self.both_wrong}; tuned wins {rate} of the decided marks")
        if self.unreadable:
            text += f" ({self.unreadable} unreadable line(s) in {self.path} skipped)"
        return text


def append_mark(ws: Workspace, record: dict[str, Any]) -> Path:
    """Append one mark (``record['choice']`` in :data:`CHOICES`) as one fsynced line."""
    if record.get("choice") not in CHOICES:
        raise ConfigError(f"An arena mark must be one of {', '.join(CHOICES)}; got {record.get('choice')!r}.")
    path = marks_path(ws)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, ensure_ascii=False, sort_keys=True).encode("utf-8") + b"\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def summarize_marks(ws: Workspace) -> PreferenceSummary | None:
    """Counts per choice, or None when no mark was ever made."""
    path = marks_path(ws)
    if not path.is_file():
        return None
    counts = dict.fromkeys(CHOICES, 0)
    unreadable = 0
    for raw in path.read_bytes().splitlines():
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except ValueError:
            unreadable += 1
            continue
        choice = rec.get("choice") if isinstance(rec, dict) else None
        if choice in counts:
            counts[choice] += 1
        else:
            unreadable += 1
    return PreferenceSummary(str(path), sum(counts.values()), counts["base"], counts["tuned"], counts["both_wrong"], unreadable)
