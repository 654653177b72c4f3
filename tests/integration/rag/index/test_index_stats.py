"""``raftsmith index stats`` on a real index (MiniLM, FAISS, SQLite)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _runtime_ws import make_workspace
from click.testing import CliRunner

from rag.cli.main import cli
from rag.config import init_workspace
from rag.index.store import IndexStore

pytestmark = pytest.mark.integration


def test_stats_report_the_index_as_it_is(tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "ws")
    cfg = ["--config", str(root / "raftsmith.yaml")]
    res = CliRunner().invoke(cli, ["index", "stats", "--json", *cfg])
    assert res.exit_code == 0, res.output
    st = json.loads(res.stdout)
    store = IndexStore(root / ".raftsmith" / "index", readonly=True)
    try:
        chunks = store.count_chunks()
        docs = len({c[2] for c in store.all_rows()})
    finally:
        store.close()
    assert st["chunks"] == chunks > 50 and st["documents"] == docs
    assert st["dim"] == 384 and st["vector_dtype"] == "float16" and st["vector_bytes_per_chunk"] == 768
    assert st["faiss_kind"] == "flat" and st["faiss_vectors"] == chunks and not st["faiss_stale"]
    faiss_file = root / ".raftsmith" / "index" / "index.faiss"
    assert st["disk_mb"]["faiss"] == round(faiss_file.stat().st_size / 1e6, 2)
    # a flat index of 384-d float32 vectors: its RAM is about its file (measured on load)
    assert 0.5 * st["disk_mb"]["faiss"] <= st["query_ram_mb"] <= 3 * st["disk_mb"]["faiss"] + 2
    text = CliRunner().invoke(cli, ["index", "stats", *cfg])
    assert text.exit_code == 0 and f"{chunks} chunks from {docs} documents" in text.output
    assert "float16, 768 bytes per chunk" in text.output and "RAM when loaded" in text.output
    quick = json.loads(CliRunner().invoke(cli, ["index", "stats", "--json", "--no-ram", *cfg]).stdout)
    assert "query_ram_mb" not in quick and quick["chunks"] == chunks


def test_stats_without_an_index_name_the_fix(tmp_path: Path) -> None:
    ws = init_workspace(tmp_path / "empty", corpus_name="x")
    res = CliRunner().invoke(cli, ["index", "stats", "--config", str(ws.config_path)])
    assert res.exit_code != 0 and "raftsmith ingest" in res.output
