"""Bad inputs each get a status and a reason; none stops the batch; good files still index."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pdf_builder import make_pdf

from rag.config import init_workspace, load_workspace
from rag.ingest.pipeline import ingest
from rag.retrieve import Retriever

pytestmark = pytest.mark.integration


def test_bad_inputs_each_get_a_status(tmp_path: Path) -> None:
    ws = init_workspace(tmp_path / "ws")
    docs = ws.root / "docs"
    (docs / "good.md").write_text("# Good\n\nThe osprey valve opens at 37 bar.\n")
    (docs / "manual.pdf").write_bytes(make_pdf(["The heron pump runs at 1450 rpm."]))
    whole = make_pdf(["This PDF is cut short and cannot be parsed at all."])
    (docs / "truncated.pdf").write_bytes(whole[: len(whole) // 3])
    (docs / "locked.pdf").write_bytes(make_pdf(["Top secret plover code 99."], password="s3cret"))
    (docs / "blob.txt").write_bytes(bytes(range(256)) * 40)
    (docs / "utf16.txt").write_bytes("The curlew sensor reports in kelvin.\n".encode("utf-16"))
    (docs / "latin1.md").write_bytes("# Fjord\n\nDie Möwe misst 12 °C.\n".encode("latin-1"))
    (docs / "empty.md").write_bytes(b"")
    (docs / "huge.md").write_text("# Huge\n\n" + "filler words here " * 80_000)  # ~1.4 MB
    (docs / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    loop = docs / "loop"
    loop.mkdir()
    os.symlink(loop, loop / "again")  # a directory symlink pointing at its own parent
    os.symlink(docs / "ring_b", docs / "ring_a.md")
    os.symlink(docs / "ring_a.md", docs / "ring_b")
    outside = tmp_path / "outside.md"
    outside.write_text("# Outside\n\nNot part of the corpus.\n")
    os.symlink(outside, docs / "escape.md")
    (docs / "inner").mkdir()
    (docs / "inner" / "deep.md").write_text("# Deep\n\nThe tern relay uses port 5150.\n")
    os.symlink(docs / "inner" / "deep.md", docs / "alias.md")  # inside the root: followed once

    cfg = ws.config_path.read_text().replace("max_file_mb: 20.0", "max_file_mb: 1.0")
    ws.config_path.write_text(cfg)
    ws = load_workspace(ws.config_path)
    report = ingest(ws)
    by = {f.source: f for f in report.files}

    def status(name: str) -> tuple[str, str]:
        f = by[f"docs/{name}"]
        return f.status, (f.reason or "")

    assert status("good.md")[0] == "ok"
    assert status("manual.pdf")[0] == "ok"
    assert status("utf16.txt")[0] == "ok"
    assert status("latin1.md")[0] == "ok"
    assert status("truncated.pdf")[0] == "error" and "PDF" in status("truncated.pdf")[1]
    assert status("locked.pdf") == ("error", status("locked.pdf")[1]) and "encrypted" in status("locked.pdf")[1]
    assert status("blob.txt") == ("skipped", "binary file (not text)")
    assert status("empty.md") == ("skipped", "empty file")
    assert status("huge.md")[0] == "skipped" and "max_file_mb" in status("huge.md")[1]
    assert status("image.png")[0] == "skipped" and "unsupported" in status("image.png")[1]
    assert status("loop/again") == ("skipped", "symlink loop (not followed)")
    assert status("ring_a.md") == ("skipped", "symlink loop (not followed)")
    assert status("escape.md")[0] == "skipped" and "leaves the ingest root" in status("escape.md")[1]
    # the symlinked alias and its target are one file: indexed once, under the first name walked
    assert ("docs/alias.md" in by) != ("docs/inner/deep.md" in by)

    with Retriever.from_workspace(ws) as r:
        text = " ".join(c.text for c in r.all_chunks())
        for needle in ("osprey valve", "heron pump", "curlew sensor", "Möwe misst 12 °C", "tern relay"):
            assert needle in text
        assert "plover" not in text and "Not part of the corpus" not in text
        pdf_chunk = next(c for c in r.all_chunks() if c.source == "docs/manual.pdf")
        assert pdf_chunk.meta["page"] == 1 and pdf_chunk.start_line == 1
        assert r.search("heron pump speed", k=1)[0].source == "docs/manual.pdf"

    # fixing a file turns its error into ok on the next run; unchanged bad files keep their status
    (docs / "truncated.pdf").write_bytes(whole)
    again = {f.source: f for f in ingest(ws).files}
    assert again["docs/truncated.pdf"].status == "ok"
    assert again["docs/blob.txt"].status == "skipped"
    assert again["docs/good.md"].action == "unchanged"


def test_missing_path_is_reported_not_raised(tmp_path: Path) -> None:
    ws = init_workspace(tmp_path / "ws")
    (ws.root / "docs" / "a.md").write_text("# A\n\nalpha text\n")
    report = ingest(ws, paths=["docs", "nope/missing.md"])
    by = {f.source: f for f in report.files}
    assert by["docs/a.md"].status == "ok"
    assert by["nope/missing.md"].status == "error" and "not found" in (by["nope/missing.md"].reason or "")


def test_same_file_named_twice_is_ingested_once(tmp_path: Path) -> None:
    ws = init_workspace(tmp_path / "ws")
    (ws.root / "docs" / "a.md").write_text("# A\n\nalpha text about the gannet\n")
    report = ingest(ws, paths=["docs", "docs/a.md", str(ws.root / "docs" / "a.md")])
    assert [f.source for f in report.files] == ["docs/a.md"]
    assert report.total_chunks == 1
