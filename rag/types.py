"""Plain data shared across the laptop and home sides (the formats in docs/architecture.md)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Chunk:
    """One retrievable passage. ``raftsmith search --json`` prints a list of ``to_dict()``."""

    chunk_id: str  # sha256 of source path + byte span: stable across runs
    source: str  # path relative to the workspace, or URL
    heading: str  # "A > B > C"
    start_line: int  # 1-based; for PDFs the page number
    end_line: int
    text: str
    score: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. {"page": 3}, ranks per mode

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not d["meta"]:
            d.pop("meta")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Chunk:
        return cls(
            chunk_id=d["chunk_id"],
            source=d["source"],
            heading=d.get("heading", ""),
            start_line=int(d.get("start_line", 0)),
            end_line=int(d.get("end_line", 0)),
            text=d["text"],
            score=float(d.get("score", 0.0)),
            meta=dict(d.get("meta") or {}),
        )

    @property
    def location(self) -> str:
        unit = "p." if self.meta.get("page") else "lines "
        span = f"{self.start_line}" if self.start_line == self.end_line else f"{self.start_line}-{self.end_line}"
        return f"{self.source}:{unit}{span}" if unit == "p." else f"{self.source}:{span}"
