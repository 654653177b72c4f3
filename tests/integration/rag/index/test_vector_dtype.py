"""Vectors in the SQLite store: float16 in a new index, float32 indexes still read and kept
consistent until ``ingest --rebuild`` (real MiniLM, FAISS and SQLite on the Kestrel sample)."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from rag.config import init_workspace, load_workspace
from rag.index.store import IndexStore
from rag.ingest.pipeline import ingest
from rag.retrieve import Retriever

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[4]
SAMPLE_DOCS = REPO / "examples" / "kestrel" / "docs"
QUERIES = ["Which TCP port does the Kestrel KX-7 relay listen on?", "What does error E-417 mean?",
           "How often should the fan filter be replaced?"]


def _blob_sizes(index_dir: Path) -> set[int]:
    con = sqlite3.connect(index_dir / "store.sqlite")
    try:
        return {int(n) for (n,) in con.execute("SELECT DISTINCT length(vector) FROM chunks")}
    finally:
        con.close()


def _top(ws_root: Path) -> list[list[str]]:
    with Retriever.from_workspace(load_workspace(ws_root / "raftsmith.yaml")) as r:
        return [[c.chunk_id for c in r.search(q, k=5, mode="dense")] for q in QUERIES]


def _as_float32_store(index_dir: Path) -> None:
    """Rewrite an index as raftsmith wrote it before float16: float32 blobs, no vector_dtype key."""
    con = sqlite3.connect(index_dir / "store.sqlite")
    try:
        rows = con.execute("SELECT id, vector FROM chunks").fetchall()
        con.executemany("UPDATE chunks SET vector=? WHERE id=?",
                        [(np.frombuffer(b, dtype="<f2").astype("<f4").tobytes(), i) for i, b in rows])
        con.execute("DELETE FROM meta WHERE key='vector_dtype'")
        con.execute("UPDATE meta SET value='2' WHERE key='schema_version'")
        con.commit()
    finally:
        con.close()


@pytest.fixture
def ws_root(tmp_path: Path) -> Path:
    ws = init_workspace(tmp_path / "ws", corpus_name="kestrel")
    shutil.rmtree(ws.root / "docs")
    shutil.copytree(SAMPLE_DOCS, ws.root / "docs")
    ingest(ws)
    return ws.root


def test_a_new_index_stores_float16_that_ranks_as_float32(ws_root: Path) -> None:
    from rag.retrieve import ReembeddedRetriever

    ws = load_workspace(ws_root / "raftsmith.yaml")
    with Retriever.from_workspace(ws) as live:
        assert live.store.vector_dtype == "float16" and live.store.get_meta("vector_dtype") == "float16"
        ids, v16 = live.store.all_vectors()
        assert v16.dtype == np.float32 and _blob_sizes(ws.index_dir) == {2 * v16.shape[1]}  # half of float32
        # the same chunks embedded again in float32, in memory (the model's own vectors)
        with ReembeddedRetriever(ws.index_dir, ws.config.embedding, ws.root, ws.config.chat) as exact:
            v32 = np.stack([exact._vecs[int(i)] for i in ids])
            assert float(np.abs(v16 - v32).max()) < 1e-3
            assert float((v16 * v32).sum(axis=1).min()) > 0.9999  # (ingest batches may run under bf16 autocast)
            for q in QUERIES:
                got, want = live.search(q, k=5, mode="dense"), exact.search(q, k=5, mode="dense")
                assert [c.chunk_id for c in got] == [c.chunk_id for c in want]
                for a, b in zip(got, want, strict=True):
                    assert a.meta["dense_score"] == pytest.approx(b.meta["dense_score"], abs=1e-3)


def test_a_float32_index_is_read_kept_and_converted_by_rebuild(ws_root: Path) -> None:
    ws = load_workspace(ws_root / "raftsmith.yaml")
    new_top = _top(ws_root)
    _as_float32_store(ws.index_dir)
    (ws.index_dir / "index.faiss").unlink()  # rebuilt from the store by the next ingest
    assert _blob_sizes(ws.index_dir) == {4 * 384}
    old = IndexStore(ws.index_dir, readonly=True)
    assert (old.vector_dtype, old.get_meta("schema_version")) == ("float32", "2")
    old.close()
    assert _top(ws_root) == new_top  # an index of float32 blobs reads as before
    doc = sorted((ws_root / "docs").iterdir())[0]
    doc.write_text(doc.read_text() + "\n\nThe spare relay ships with a blue cable.\n")
    report = ingest(ws)  # incremental: the new vectors are written in the store's own dtype, never mixed
    assert report.embeddings_computed > 0 and _blob_sizes(ws.index_dir) == {4 * 384}
    kept = IndexStore(ws.index_dir, readonly=True)
    assert (kept.vector_dtype, kept.get_meta("schema_version")) == ("float32", "2")  # still format 2
    kept.close()
    before = _top(ws_root)
    report = ingest(ws, rebuild=True)
    assert report.total_chunks > 50 and _blob_sizes(ws.index_dir) == {2 * 384}
    rebuilt = IndexStore(ws.index_dir, readonly=True)
    assert (rebuilt.vector_dtype, rebuilt.get_meta("schema_version")) == ("float16", "3")
    rebuilt.close()
    assert _top(ws_root) == before


def test_an_older_raftsmith_is_refused_a_newer_format_and_mixed_vectors_are_caught(ws_root: Path) -> None:
    from rag.errors import IndexStoreError

    db = ws_root / ".raftsmith" / "index" / "store.sqlite"
    con = sqlite3.connect(db)
    con.execute("UPDATE meta SET value='4' WHERE key='schema_version'")
    con.commit()
    with pytest.raises(IndexStoreError, match="newer raftsmith"):
        IndexStore(db.parent, readonly=True)
    con.execute("UPDATE meta SET value='3' WHERE key='schema_version'")
    (i, blob), = con.execute("SELECT id, vector FROM chunks ORDER BY id LIMIT 1").fetchall()
    con.execute("UPDATE chunks SET vector=? WHERE id=?", (np.frombuffer(blob, "<f2").astype("<f4").tobytes(), i))
    con.commit()
    con.close()
    store = IndexStore(db.parent, readonly=True)
    with pytest.raises(IndexStoreError, match="ingest --rebuild"):
        store.all_vectors()
    store.close()
