"""The export manifest, read by both sides: gguf/<name>/manifest.json.

``raftsmith export`` (``builder.export.run``) writes one folder per export with a
``manifest.json`` of format :data:`EXPORT_FORMAT`: the family, chat format, stop strings and
every file with its role (merged, base, adapter, modelfile, ...), quantization, size and
sha256. Everything on the laptop side that needs an export (answering, register, bundle)
finds it here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rag.config import Workspace

__all__ = ["EXPORT_FORMAT", "Export", "find_export", "list_exports", "newest_export"]

EXPORT_FORMAT = "raftsmith-export/1"


@dataclass
class Export:
    dir: Path
    manifest: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.manifest.get("name") or self.dir.name)

    def files(self, role: str) -> list[dict[str, Any]]:
        return [f for f in self.manifest.get("files", []) if f.get("role") == role]

    def file(self, role: str, prefer_quant: list[str] | None = None) -> tuple[Path, dict[str, Any]] | None:
        entries = self.files(role)
        if not entries:
            return None
        order = [q.lower() for q in (prefer_quant or [])]

        def rank(e: dict[str, Any]) -> int:
            q = str(e.get("quantization") or "").lower()
            return order.index(q) if q in order else len(order)

        best = sorted(entries, key=rank)[0]
        return self.dir / str(best["path"]), best

    @property
    def stop(self) -> list[str]:
        return [str(s) for s in self.manifest.get("stop") or []]



def list_exports(ws: Workspace) -> list[Export]:
    """Every valid export under the export dir, newest first (created_at, then mtime)."""
    root = ws.export_dir
    found: list[tuple[str, float, Export]] = []
    if not root.is_dir():
        return []
    for mf in root.glob("*/manifest.json"):
        try:
            data = json.loads(mf.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
            continue
        found.append((str(data.get("created_at") or ""), mf.stat().st_mtime, Export(mf.parent, data)))
    found.sort(key=lambda t: (t[0], t[1]), reverse=True)
    return [e for _, _, e in found]


def newest_export(ws: Workspace) -> Export | None:
    exports = list_exports(ws)
    return exports[0] if exports else None


def find_export(ws: Workspace, name: str) -> Export | None:
    for e in list_exports(ws):
        if e.name == name or e.dir.name == name:
            return e
    return None
