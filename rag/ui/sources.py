"""The cited chunk as the page shows it: the indexed text plus its lines as they are on disk now.

A chunk's ``source`` is a path relative to the workspace (or a URL for crawled pages). The
file is read only when it resolves, links followed, to a regular file inside the workspace:
an index that names ``../../etc/passwd`` or a link pointing out of the workspace gets the
indexed text only, never the outside file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rag.config import Workspace
from rag.types import Chunk

__all__ = ["MAX_LINES", "chunk_view", "workspace_file"]

MAX_LINES = 400  # a span longer than this is cut (a chunk is a few hundred tokens)


def workspace_file(ws: Workspace, source: str) -> Path | None:
    """The file ``source`` names, or None when it is a URL, missing, or outside the workspace."""
    if not source or "://" in source or "\x00" in source:
        return None
    rel = Path(source)
    if rel.is_absolute():
        return None
    root = ws.root.resolve()
    try:
        target = (root / rel).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not target.is_relative_to(root) or not target.is_file():
        return None
    return target


def chunk_view(ws: Workspace, chunk: Chunk) -> dict[str, Any]:
    """The JSON the chunk viewer renders (every string is shown as text, never as HTML)."""
    out: dict[str, Any] = {"chunk_id": chunk.chunk_id, "source": chunk.source, "heading": chunk.heading,
                           "start_line": chunk.start_line, "end_line": chunk.end_line, "location": chunk.location,
                           "text": chunk.text, "page": chunk.meta.get("page"), "file_lines": None, "file_note": None}
    if chunk.meta.get("page"):
        out["file_note"] = "a PDF page: the indexed text is shown"
        return out
    path = workspace_file(ws, chunk.source)
    if path is None:
        out["file_note"] = "the source is not a file inside the workspace: the indexed text is shown"
        return out
    try:
        with path.open(encoding="utf-8", errors="replace") as fh:
            lines: list[list[Any]] = []
            for n, line in enumerate(fh, start=1):
                if n > chunk.end_line or len(lines) >= MAX_LINES:
                    break
                if n >= chunk.start_line:
                    lines.append([n, line.rstrip("\n")])
    except OSError as err:
        out["file_note"] = f"the source file cannot be read ({err.strerror or err})"
        return out
    out["file_lines"] = lines
    return out
