"""Ingest in committed batches: a stopped ingest keeps what it committed and the next one goes on
from there (real MiniLM, SQLite/FTS5 and FAISS; the kill is a real SIGKILL of a child process)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import faiss
import numpy as np
import pytest

from rag.config import init_workspace, load_workspace
from rag.index.stats import describe, index_stats
from rag.index.store import DB_NAME, IndexStore, load_faiss
from rag.ingest.pipeline import ingest
from rag.retrieve import Retriever

pytestmark = pytest.mark.integration

N_DOCS = 48
COMMIT_EVERY = 12  # chunks per batch: ~4 documents of 3 chunks


def _doc(i: int) -> str:
    # three sections, each its own chunk; every text differs, so no vector is shared between documents
    return "".join(
        f"## Part {j} of unit {i}\n\nUnit {i} section {j}: the valve number {i * 31 + j} opens at "
        f"{(i * 7 + j * 3) % 97} kPa and closes after {i + j} seconds on relay {i % 5}.\n\n"
        for j in range(3))


def _workspace(root: Path, n_docs: int = N_DOCS, commit_every: int = COMMIT_EVERY) -> Path:
    ws = init_workspace(root, corpus_name="valves")
    for p in (ws.root / "docs").iterdir():
        p.unlink()
    for i in range(n_docs):
        (ws.root / "docs" / f"unit{i:03d}.md").write_text(f"# Unit {i}\n\n{_doc(i)}")
    text = ws.config_path.read_text()
    assert "  commit_every: 2048" in text
    ws.config_path.write_text(text.replace("  commit_every: 2048", f"  commit_every: {commit_every}"))
    return ws.root


def _chunks(index_dir: Path) -> list[tuple[str, str, str]]:
    con = sqlite3.connect(index_dir / DB_NAME)
    try:
        return sorted(con.execute("SELECT chunk_id, source, text FROM chunks").fetchall())
    finally:
        con.close()


def _committed_documents(index_dir: Path) -> int:
    try:
        con = sqlite3.connect(f"file:{index_dir / DB_NAME}?mode=ro", uri=True, timeout=0.05)
        try:
            return int(con.execute("SELECT COUNT(*) FROM documents WHERE status='ok'").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:  # not created yet, or a commit holds the lock
        return 0


def _faiss_ids(index) -> np.ndarray:  # noqa: ANN001
    """Every id a FAISS index holds: its id map, or (IVF) the ids of its inverted lists."""
    if hasattr(index, "id_map"):
        return faiss.vector_to_array(index.id_map).astype(np.int64)
    inv = faiss.extract_index_ivf(index).invlists
    parts = [faiss.rev_swig_ptr(inv.get_ids(lst), inv.list_size(lst)).copy() for lst in range(inv.nlist)
             if inv.list_size(lst)]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)


def _assert_consistent(root: Path) -> None:
    """No duplicate chunk, FAISS holds exactly the store's ids, and the two share a generation."""
    ws = load_workspace(root / "raftsmith.yaml")
    rows = _chunks(ws.index_dir)
    assert len(rows) == len({r[0] for r in rows})
    store = IndexStore(ws.index_dir, readonly=True)
    try:
        ids = np.sort(np.fromiter((r[0] for r in store.con.execute("SELECT id FROM chunks")), dtype=np.int64))
        generation, started = store.get_meta("generation"), store.get_meta("ingest_started_at")
        n_docs = store.con.execute("SELECT COUNT(*) FROM documents WHERE n_chunks > 0").fetchone()[0]
    finally:
        store.close()
    loaded = load_faiss(ws.index_dir)
    assert loaded is not None
    index, meta = loaded
    assert str(meta["generation"]) == generation and started is None
    assert index.ntotal == len(ids) == meta["n_chunks"]
    stored = np.sort(_faiss_ids(index))
    assert np.array_equal(stored, ids)
    assert n_docs == len({r[1] for r in rows})


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, str, str]]:
    """The chunks one uninterrupted ingest makes of the corpus."""
    root = _workspace(tmp_path_factory.mktemp("ref") / "ws")
    ws = load_workspace(root / "raftsmith.yaml")
    report = ingest(ws)
    assert report.counts()["ok"] == N_DOCS and not report.resumed
    assert report.embeddings_computed == report.total_chunks == 3 * N_DOCS
    _assert_consistent(root)
    return _chunks(ws.index_dir)


CHILD = """
import sys
from rag.config import load_workspace
from rag.ingest.pipeline import ingest
ingest(load_workspace(sys.argv[1]))
"""


def test_sigkill_mid_ingest_then_resume(tmp_path: Path, reference: list[tuple[str, str, str]]) -> None:
    root = _workspace(tmp_path / "ws")
    ws = load_workspace(root / "raftsmith.yaml")
    env = dict(os.environ, RAFTSMITH_THREADS="1")  # slower embedding: the kill lands between commits
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(ws.config_path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None and _committed_documents(ws.index_dir) < 8:
            time.sleep(0.02)
        assert proc.poll() is None, f"ingest ended before it could be killed: {proc.stderr.read()[-2000:]}"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    committed = _chunks(ws.index_dir)
    assert 0 < len(committed) < len(reference)
    assert set(committed) <= set(reference)  # only whole, correct documents were committed
    per_doc = Counter(source for _, source, _ in committed)
    assert set(per_doc.values()) == {3}

    report = ingest(load_workspace(ws.config_path))
    assert report.resumed
    # nothing that was committed is embedded again
    assert report.embeddings_computed == len(reference) - len(committed)
    actions = Counter(f.action for f in report.files)
    assert actions["unchanged"] == len(per_doc) and actions["added"] == N_DOCS - len(per_doc)
    assert _chunks(ws.index_dir) == reference
    _assert_consistent(root)
    hits = Retriever.from_workspace(load_workspace(ws.config_path)).search(
        "At what pressure does valve number 1395 open?", k=3, mode="hybrid")
    assert any("valve number 1395" in c.text for c in hits)


class _Stop(Exception):
    pass


def _stop_after(monkeypatch: pytest.MonkeyPatch, cls: type, name: str, calls: int) -> list[int]:
    """Make ``cls.name`` raise on its ``calls``-th call (an out-of-memory, a Ctrl-C)."""
    real = getattr(cls, name)
    seen: list[int] = []

    def counted(self, items, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        items = list(items)
        seen.append(len(items))
        if len(seen) == calls:
            raise _Stop
        return real(self, items, *args, **kwargs)

    monkeypatch.setattr(cls, name, counted)
    return seen


def test_a_failure_keeps_committed_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           reference: list[tuple[str, str, str]]) -> None:
    root = _workspace(tmp_path / "ws")
    ws = load_workspace(root / "raftsmith.yaml")
    from rag.index.embedder import SentenceEmbedder

    seen = _stop_after(monkeypatch, SentenceEmbedder, "encode", calls=3)  # the third embedding batch
    with pytest.raises(_Stop):
        ingest(ws)
    assert len(seen) == 3
    committed = _chunks(ws.index_dir)
    assert len(committed) == sum(seen[:2]) and set(committed) <= set(reference)
    st = index_stats(ws.index_dir, measure_ram=False)  # the next ingest (and index stats) knows it goes on
    assert st["ingest_unfinished_since"] and st["faiss_stale"] and st["chunks"] == len(committed)
    assert any("has not finished" in line for line in describe(st))
    # a reader in between sees the committed chunks, with the FAISS file rebuilt in memory
    hits = Retriever.from_workspace(ws).search("valve number 0 opens", k=3, mode="hybrid")
    assert hits and all(c.source in {s for _, s, _ in committed} for c in hits)
    monkeypatch.undo()
    report = ingest(load_workspace(ws.config_path))
    assert report.resumed and report.embeddings_computed == len(reference) - len(committed)
    assert _chunks(ws.index_dir) == reference
    _assert_consistent(root)
    st = index_stats(ws.index_dir, measure_ram=False)
    assert st["ingest_unfinished_since"] is None and not st["faiss_stale"]
    assert not any("has not finished" in line for line in describe(st))


def test_a_stopped_rebuild_leaves_no_chunk_of_the_old_chunking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _workspace(tmp_path / "ws", n_docs=16)
    ingest(load_workspace(root / "raftsmith.yaml"))
    before = _chunks(load_workspace(root / "raftsmith.yaml").index_dir)
    cfg = root / "raftsmith.yaml"
    cfg.write_text(cfg.read_text().replace("  chunk_overlap: 32", "  chunk_overlap: 8"))
    ws = load_workspace(cfg)
    # the sixth document's write: the first batch (4 documents) is committed, the second rolled back
    seen = _stop_after(monkeypatch, IndexStore, "insert_chunks", calls=6)
    (ws.root / "docs" / "unit003.md").unlink()  # gone while the rebuild was stopped
    with pytest.raises(_Stop):
        ingest(ws)
    assert len(seen) == 6
    monkeypatch.undo()
    mid = IndexStore(ws.index_dir, readonly=True)
    try:  # the committed batch: 4 documents chunked the new way, the rest still stale
        stale = mid.con.execute("SELECT COUNT(*) FROM documents WHERE sha256 IS NULL").fetchone()[0]
        assert (stale, mid.get_meta("chunking").endswith("/8")) == (16 - 4, True)
    finally:
        mid.close()
    report = ingest(load_workspace(cfg))
    assert report.resumed
    after = _chunks(ws.index_dir)
    # chunk texts did not change (each section fits one chunk), so their vectors were reused
    assert report.embeddings_computed == 0
    assert after == [r for r in before if r[1] != "docs/unit003.md"]
    store = IndexStore(ws.index_dir, readonly=True)
    try:
        assert store.get_meta("chunking").endswith("/8")
        assert "docs/unit003.md" not in store.sources()
        assert store.con.execute("SELECT COUNT(*) FROM documents WHERE sha256 IS NULL").fetchone()[0] == 0
    finally:
        store.close()
    _assert_consistent(root)


def test_unchanged_corpus_after_a_stop_before_faiss_only_rebuilds_faiss(tmp_path: Path, reference) -> None:
    """Killed after the last commit but before index.faiss was written: the next ingest embeds
    nothing and brings FAISS to the store's generation."""
    root = _workspace(tmp_path / "ws")
    ws = load_workspace(root / "raftsmith.yaml")
    ingest(ws)
    (ws.root / "docs" / "unit000.md").write_text("# Unit 0\n\nUnit zero now holds one short line about valve 9999.\n")
    saved = (ws.index_dir / "index.faiss").read_bytes(), (ws.index_dir / "meta.json").read_text()
    ingest(load_workspace(ws.config_path))
    # put back the FAISS files of the generation before: as if the process died before saving
    (ws.index_dir / "index.faiss").write_bytes(saved[0])
    (ws.index_dir / "meta.json").write_text(saved[1])
    report = ingest(load_workspace(ws.config_path))
    assert report.embeddings_computed == 0 and report.chunks_added == 0
    _assert_consistent(root)
    hits = Retriever.from_workspace(load_workspace(ws.config_path)).search("valve 9999", k=1, mode="dense")
    assert hits[0].source == "docs/unit000.md"


def test_parse_workers_make_the_index_the_ingest_process_makes(tmp_path: Path) -> None:
    """corpus.parse_workers: files read, parsed and chunked by spawned processes that load the
    tokenizer alone give the same chunks, statuses and reasons as the ingest process itself."""
    import shutil

    kestrel = Path(__file__).resolve().parents[4] / "examples" / "kestrel" / "docs"
    reports, chunks = [], []
    for workers in (0, 2):
        ws = init_workspace(tmp_path / f"w{workers}", corpus_name="kestrel")
        shutil.rmtree(ws.root / "docs")
        shutil.copytree(kestrel, ws.root / "docs")
        (ws.root / "docs" / "broken.pdf").write_bytes(b"%PDF-1.4 not really a pdf")
        (ws.root / "docs" / "empty.md").write_text("\n\n")
        text = ws.config_path.read_text().replace("  parse_workers: 0", f"  parse_workers: {workers}")
        ws.config_path.write_text(text.replace("  commit_every: 2048", "  commit_every: 50"))
        report = ingest(load_workspace(ws.config_path))
        reports.append(sorted((f.source, f.status, f.reason, f.action, f.chunks, f.embedded) for f in report.files))
        chunks.append(_chunks(ws.index_dir))
        _assert_consistent(ws.root)
    assert reports[0] == reports[1]
    assert chunks[0] == chunks[1] and len(chunks[0]) > 100
    statuses = {r[0]: r[1] for r in reports[1]}
    assert statuses["docs/broken.pdf"] == "error" and statuses["docs/empty.md"] == "skipped"


def test_an_ivf_index_is_updated_in_place_until_the_corpus_doubles(tmp_path: Path) -> None:
    """index.kind ivf (and ivfpq, the same path): an incremental ingest removes the changed
    document's old ids from the trained index and adds its new vectors, without training again;
    past twice the trained size it is trained and calibrated anew."""
    import json

    root = _workspace(tmp_path / "ws", n_docs=40)
    cfg = root / "raftsmith.yaml"
    cfg.write_text(cfg.read_text().replace("  kind: auto", "  kind: ivf"))
    ws = load_workspace(cfg)
    ingest(ws)
    meta = json.loads((ws.index_dir / "meta.json").read_text())
    assert meta["faiss_kind"] == "ivf" and meta["trained_n"] == 120 and "updated_in_place" not in meta
    (ws.root / "docs" / "unit007.md").write_text("# Unit 7\n\nUnit seven now holds one line: valve 4242 is retired.\n")
    report = ingest(load_workspace(cfg))
    assert (report.chunks_removed, report.chunks_added) == (3, 1)
    meta = json.loads((ws.index_dir / "meta.json").read_text())
    assert (meta["trained_n"], meta["updated_in_place"], meta["n_chunks"]) == (120, 1, 118)
    _assert_consistent(root)
    store = IndexStore(ws.index_dir, readonly=True)
    (new_id, blob), = store.con.execute("SELECT id, vector FROM chunks WHERE source='docs/unit007.md'").fetchall()
    vec = store.decode_vec(blob)
    store.close()
    index, _ = load_faiss(ws.index_dir)
    index.nprobe = index.nlist
    _, got = index.search(vec[None, :], 1)
    assert int(got[0][0]) == new_id  # the new vector is in the trained index
    for i in range(40, 200):  # the corpus grows past twice the trained size: trained again
        (ws.root / "docs" / f"unit{i:03d}.md").write_text(f"# Unit {i}\n\n{_doc(i)}")
    ingest(load_workspace(cfg))
    meta = json.loads((ws.index_dir / "meta.json").read_text())
    assert meta["trained_n"] == meta["n_chunks"] == 118 + 480 and "updated_in_place" not in meta
    _assert_consistent(root)
