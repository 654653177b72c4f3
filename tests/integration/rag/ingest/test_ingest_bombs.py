"""Ingest bombs and odd files against a real workspace: each is skipped (or indexed with a
warning) with its reason, the run finishes, and what was indexed before stays consistent:
SQLite and FAISS agree, searches still work, the audit chain verifies, nothing lands outside
the workspace."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from pdf_builder import make_content_pdf, text_ops

from rag.audit import verify
from rag.config import init_workspace, load_workspace
from rag.index.store import IndexStore, load_faiss
from rag.ingest.pipeline import ingest
from rag.retrieve import Retriever

pytestmark = pytest.mark.integration


def _consistent(ws) -> int:  # type: ignore[no-untyped-def]
    store = IndexStore(ws.index_dir)
    try:
        n = store.count_chunks()
    finally:
        store.close()
    saved = load_faiss(ws.index_dir)
    assert saved is not None and saved[0].ntotal - int(saved[1].get("tombstones", 0)) == n
    assert verify(ws.audit_path).ok
    return n


def test_bombs_are_skipped_and_the_index_stays_consistent(tmp_path: Path) -> None:
    ws = init_workspace(tmp_path / "ws")
    docs = ws.root / "docs"
    cfg = (ws.config_path.read_text().replace("max_file_mb: 20.0", "max_file_mb: 1.0")
           .replace("max_text_ratio: 1.0", "max_text_ratio: 0.05").replace("max_pdf_page_mb: 2.0", "max_pdf_page_mb: 1.0"))
    ws.config_path.write_text(cfg)
    ws = load_workspace(ws.config_path)  # text cap: 50,000 characters per file
    (docs / "good.md").write_text("# Good\n\nThe osprey valve opens at 37 bar.\n")
    (docs / "manual.txt").write_text("The heron pump runs at 1450 rpm.\n")
    first = ingest(ws)
    assert first.counts() == {"ok": 2, "skipped": 0, "error": 0}
    before = _consistent(ws)

    # the bombs arrive; manual.txt itself turns into one
    bomb = make_content_pdf([text_ops("A harmless first page."),
                             text_ops("The heron pump runs at 1450 rpm and more words here", repeat=40_000)])
    assert len(bomb) < 40_000  # 3.3 MB of drawing instructions in a small file
    (docs / "bomb.pdf").write_bytes(bomb)
    (docs / "long.pdf").write_bytes(make_content_pdf([text_ops("Page text about the tern relay.", 200)] * 20))
    (docs / "manual.txt").write_text("filler words " * 5_000)  # 65,000 characters > 50,000
    line = " ".join(f"gannet{i % 97} sensor" for i in range(2_500))  # 40 KB on one line
    (docs / "oneline.txt").write_text(line)
    text = "# Möwe\n\nDie Möwe misst 12 °C am Kai.\n".encode()
    (docs / "badbyte.md").write_bytes(text[:12] + b"\xff" + text[12:])
    (docs / "late_binary.txt").write_bytes(("The curlew logs in kelvin.\n" * 400).encode() + bytes(range(256)) * 8)
    fifo = docs / "pipe.md"
    os.mkfifo(fifo)

    hung = threading.Event()

    def unblock() -> None:  # if ingest opened the FIFO it would wait for a writer forever
        if not done.wait(120):
            hung.set()
            with open(fifo, "wb"):
                pass

    done = threading.Event()
    watchdog = threading.Thread(target=unblock, daemon=True)
    watchdog.start()
    report = ingest(ws)
    done.set()
    assert not hung.is_set(), "ingest blocked on a FIFO"
    by = {f.source.removeprefix("docs/"): f for f in report.files}

    assert by["bomb.pdf"].status == "skipped"
    assert "PDF page 2 holds over 1 MB of drawing instructions" in (by["bomb.pdf"].reason or "")
    assert "corpus.max_pdf_page_mb" in (by["bomb.pdf"].reason or "")
    assert by["long.pdf"].status == "skipped" and "0.05 million characters" in (by["long.pdf"].reason or "")
    assert by["manual.txt"].status == "skipped" and "corpus.max_text_ratio" in (by["manual.txt"].reason or "")
    assert (by["pipe.md"].status, by["pipe.md"].reason) == (
        "skipped", "not a regular file but a FIFO (named pipe); only regular files are ingested")
    assert by["late_binary.txt"].status == "skipped"
    assert by["late_binary.txt"].reason == "binary file (not text): binary data from byte 8192"
    assert (by["badbyte.md"].status, by["badbyte.md"].reason) == ("ok", "1 invalid UTF-8 byte sequence replaced with U+FFFD")
    assert by["oneline.txt"].status == "ok" and by["oneline.txt"].chunks >= 2
    assert by["good.md"].action == "unchanged"

    after = _consistent(ws)
    assert after >= before - 1 + 2  # manual.txt's chunk left; oneline and badbyte came in
    with Retriever.from_workspace(ws) as r:
        chunks = r.all_chunks()
        sources = {c.source for c in chunks}
        assert sources == {"docs/good.md", "docs/oneline.txt", "docs/badbyte.md"}
        text_all = " ".join(c.text for c in chunks)
        assert "Möwe misst 12 °C" in text_all and "heron pump" not in text_all  # the bomb's text never got in
        assert all(len(c.text) <= 256 * 32 for c in chunks)
        assert r.search("osprey valve pressure", k=1)[0].source == "docs/good.md"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ws"]

    # an unchanged bad file keeps its status and reason on the next run
    again = {f.source.removeprefix("docs/"): f for f in ingest(ws).files}
    assert again["badbyte.md"].action == "unchanged" and "invalid UTF-8" in (again["badbyte.md"].reason or "")
    assert again["bomb.pdf"].status == "skipped"
    assert _consistent(ws) == after
