"""The chunk viewer reads source lines only from files inside the workspace."""

from __future__ import annotations

from pathlib import Path

from rag.config import init_workspace
from rag.types import Chunk
from rag.ui.sources import chunk_view, workspace_file


def _chunk(source: str, start: int = 2, end: int = 3, **meta: object) -> Chunk:
    return Chunk("c1", source, "Intro", start, end, "indexed text", meta=dict(meta))


def test_lines_of_a_file_inside_the_workspace(tmp_path: Path) -> None:
    ws = init_workspace(tmp_path / "ws")
    (ws.root / "docs" / "a.md").write_text("one\ntwo <b>\nthree\nfour\n")
    view = chunk_view(ws, _chunk("docs/a.md"))
    assert view["file_lines"] == [[2, "two <b>"], [3, "three"]]
    assert view["location"] == "docs/a.md:2-3" and view["text"] == "indexed text"


def test_paths_leading_out_of_the_workspace_are_never_read(tmp_path: Path) -> None:
    ws = init_workspace(tmp_path / "ws")
    secret = tmp_path / "secret.txt"
    secret.write_text("line1\nTOP SECRET\nline3\n")
    (ws.root / "docs" / "link.md").symlink_to(secret)
    (ws.root / "docs" / "dirlink").symlink_to(tmp_path)
    for source in ("../secret.txt", str(secret), "docs/link.md", "docs/dirlink/secret.txt",
                   "docs/../../secret.txt", "https://example.com/x", "docs/missing.md", "docs", "docs/a\x00.md"):
        assert workspace_file(ws, source) is None, source
        view = chunk_view(ws, _chunk(source))
        assert view["file_lines"] is None and "indexed text" in view["file_note"] + view["text"]
        assert "TOP SECRET" not in str(view)


def test_pdf_pages_show_the_indexed_text(tmp_path: Path) -> None:
    ws = init_workspace(tmp_path / "ws")
    (ws.root / "docs" / "a.pdf").write_bytes(b"%PDF-1.4")
    view = chunk_view(ws, _chunk("docs/a.pdf", 3, 3, page=3))
    assert view["file_lines"] is None and view["page"] == 3 and "PDF" in view["file_note"]
