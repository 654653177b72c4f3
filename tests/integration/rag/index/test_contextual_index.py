"""Contextual chunks, identifier forms, fusion settings and the index format version, end to end
(real MiniLM, FAISS and SQLite/FTS5)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from rag.cli.main import cli
from rag.config import init_workspace, load_workspace
from rag.errors import IndexStoreError
from rag.index.store import DB_NAME, SCHEMA_VERSION
from rag.ingest.pipeline import ingest
from rag.retrieve import Retriever

pytestmark = pytest.mark.integration

WIDGET = """# Zorblax widget

The Zorblax widget converts sensor frames into calibrated telemetry for the KX-7 relay.

## Example

```python
frames = read_frames()
out = MultipleNegativesRankingLoss(frames)
client.push(out, via="relay.listen_port")
```
"""

OTHER = """# Maintenance

Replace the fan filter every six months. Clean the vents with dry air.
"""

# The format-1 schema, as raftsmith wrote it before chunks carried document context.
V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE documents (source TEXT PRIMARY KEY, sha256 TEXT, mtime REAL, size INTEGER, kind TEXT,
    status TEXT NOT NULL, reason TEXT, n_chunks INTEGER NOT NULL DEFAULT 0, updated_at REAL);
CREATE TABLE chunks (id INTEGER PRIMARY KEY, chunk_id TEXT NOT NULL UNIQUE, source TEXT NOT NULL,
    heading TEXT NOT NULL, start_line INTEGER NOT NULL, end_line INTEGER NOT NULL, page INTEGER,
    byte_start INTEGER NOT NULL, byte_end INTEGER NOT NULL, text TEXT NOT NULL, n_tokens INTEGER NOT NULL,
    embed_sha TEXT NOT NULL, vector BLOB NOT NULL);
CREATE VIRTUAL TABLE chunks_fts USING fts5(heading, text, tokenize='porter unicode61');
INSERT INTO meta VALUES ('schema_version', '1'), ('generation', '3'), ('embedding_model', 'default');
INSERT INTO documents VALUES ('docs/widget.md', 'x', 0, 1, 'markdown', 'ok', NULL, 1, 0);
INSERT INTO chunks VALUES (1, 'c1', 'docs/widget.md', 'Old', 1, 2, NULL, 0, 1, 'old text', 2, 'e', x'00000000');
INSERT INTO chunks_fts(rowid, heading, text) VALUES (1, 'Old', 'old text');
"""


@pytest.fixture
def ws_root(tmp_path: Path) -> Path:
    ws = init_workspace(tmp_path / "ws", corpus_name="ctx")
    (ws.root / "docs" / "widget.md").write_text(WIDGET)
    (ws.root / "docs" / "maintenance.md").write_text(OTHER)
    return ws.root


def test_context_is_searched_but_never_shown(ws_root: Path) -> None:
    ws = load_workspace(ws_root)
    ingest(ws)
    with Retriever.from_workspace(ws) as r:
        example = next(c for c in r.all_chunks() if c.heading.endswith("Example"))
        assert "Zorblax widget converts" not in example.text  # the shown text is the chunk's own
        context = r.store.con.execute("SELECT context FROM chunks WHERE chunk_id=?", (example.chunk_id,)).fetchone()[0]
        assert context.startswith("The Zorblax widget converts sensor frames")
        # BM25: a word only the document's lead has finds the code chunk too
        assert example.chunk_id in [c.chunk_id for c in r.search("calibrated telemetry", k=5, mode="bm25")]
        # identifiers: CamelCase parts and the whole dotted name find the code chunk
        assert r.search("ranking loss", k=1, mode="bm25")[0].chunk_id == example.chunk_id
        assert r.search("relay.listen_port", k=1, mode="bm25")[0].chunk_id == example.chunk_id
        # dense: the contextual embedding ties the code chunk to the widget's description
        dense = r.search("how do I use the Zorblax widget in code", k=2, mode="dense")
        assert example.chunk_id in [c.chunk_id for c in dense]


def test_fusion_and_aggregation_settings_apply(ws_root: Path) -> None:
    cfg = ws_root / "raftsmith.yaml"
    text = cfg.read_text()
    assert "mode: hybrid" in text
    ws = load_workspace(ws_root)
    ingest(ws)
    cfg.write_text(text.replace("mode: hybrid", "mode: hybrid\n  fusion: scores\n  dense_weight: 0.7\n  aggregate: document"))
    ws = load_workspace(ws_root)
    with Retriever.from_workspace(ws) as r:
        assert (r.fusion, r.dense_weight, r.aggregate) == ("scores", 0.7, "document")
        hits = r.search("Zorblax widget example code", k=3, mode="hybrid")
        sources = [c.source for c in hits]
        assert sources == sorted(sources, key=lambda s: s != "docs/widget.md")  # grouped: widget first
        assert sources[0] == "docs/widget.md"


def _write_v1(index_dir: Path) -> None:
    index_dir.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(index_dir / DB_NAME)
    con.executescript(V1_SCHEMA)
    con.commit()
    con.close()


def test_an_old_index_names_the_rebuild_and_ingest_rebuilds_it(ws_root: Path) -> None:
    ws = load_workspace(ws_root)
    _write_v1(ws.index_dir)
    with pytest.raises(IndexStoreError, match=r"raftsmith ingest --rebuild"):
        Retriever.from_workspace(ws)
    runner = CliRunner()
    res = runner.invoke(cli, ["search", "widget", "--config", str(ws.config_path)])
    assert res.exit_code != 0 and "raftsmith ingest --rebuild" in res.output
    res = runner.invoke(cli, ["ingest", "--json", "--config", str(ws.config_path)])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["chunks_removed"] == 1 and report["counts"]["ok"] == 2
    with Retriever.from_workspace(load_workspace(ws_root)) as r:
        assert r.store.get_meta("schema_version") == str(SCHEMA_VERSION)
        assert not any(c.text == "old text" for c in r.all_chunks())
        assert "Zorblax" in r.search("Zorblax widget", k=1, mode="hybrid")[0].text


def test_rebuild_flag_rebuilds_a_current_index(ws_root: Path) -> None:
    ws = load_workspace(ws_root)
    first = ingest(ws)
    runner = CliRunner()
    res = runner.invoke(cli, ["ingest", "--rebuild", "--json", "--config", str(ws.config_path)])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["chunks_removed"] == first.total_chunks
    assert report["chunks_added"] == report["total_chunks"] == first.total_chunks
    assert report["embeddings_computed"] == 0  # same model, same texts: the vectors are reused
    with Retriever.from_workspace(load_workspace(ws_root)) as r:
        assert r.store.count_chunks() == first.total_chunks
        assert int(r.store.get_meta("generation") or 0) > 0


def test_a_failed_rebuild_leaves_the_old_index(ws_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ws = load_workspace(ws_root)
    _write_v1(ws.index_dir)

    def boom(self: object, *a: object, **k: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr("rag.index.store.IndexStore.put_document", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        ingest(ws)
    con = sqlite3.connect(ws.index_dir / DB_NAME)
    assert con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == "1"
    assert con.execute("SELECT text FROM chunks").fetchall() == [("old text",)]
    con.close()
