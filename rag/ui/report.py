"""The Report view: the newest ``raftsmith eval`` report in the workspace, and the arena row.

``raftsmith eval`` writes ``.raftsmith/eval/<UTC timestamp>/`` (results.json, report.md,
report.html, chart.png). The page shows the summary table from results.json, rendered with
the same headings and formatting as the CLI (:func:`rag.evaluate.table_rows`), and the chart.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rag.config import Workspace
from rag.evaluate.preferences import summarize_marks
from rag.evaluate.report import table_header, table_rows

__all__ = ["latest_report_dir", "report_view"]


def latest_report_dir(ws: Workspace) -> Path | None:
    """The eval folder whose results.json is newest, among those under the state dir."""
    root = ws.state_dir / "eval"
    if not root.is_dir():
        return None
    found = [p for p in root.glob("*/results.json") if p.is_file() and not p.is_symlink()]
    if not found:
        return None
    return max(found, key=lambda p: (p.stat().st_mtime, p.parent.name)).parent


def chart_path(ws: Workspace) -> Path | None:
    d = latest_report_dir(ws)
    if d is None:
        return None
    p = d / "chart.png"
    # the chart must be a plain file inside the workspace, never a link leading out of it
    if not p.is_file() or p.is_symlink() or not p.resolve().is_relative_to(ws.root.resolve()):
        return None
    return p


def report_view(ws: Workspace) -> dict[str, Any]:
    """What the Report view shows; ``found`` is False when eval has not run in this workspace."""
    prefs = summarize_marks(ws)
    out: dict[str, Any] = {"found": False, "preferences": prefs.to_dict() | {"line": prefs.line()} if prefs else None}
    d = latest_report_dir(ws)
    if d is None:
        out["hint"] = "No eval report yet: run 'raftsmith eval' in this workspace."
        return out
    try:
        data = json.loads((d / "results.json").read_text(encoding="utf-8"))
        summary = list(data["summary"])
    except (OSError, ValueError, KeyError, TypeError):
        out["hint"] = f"The eval report in {d.name} is unreadable; run 'raftsmith eval' again."
        return out
    meta = data.get("meta") or {}
    out.update(found=True, name=d.name, created_at=meta.get("created_at"), corpus=meta.get("corpus"),
               header=table_header(), rows=table_rows(summary), chart=chart_path(ws) is not None)
    return out
