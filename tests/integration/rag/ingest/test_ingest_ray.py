"""``raftsmith ingest --ray local --ray-workers 2``: a real two-worker Ray cluster started by the
command makes the index a single-machine ingest makes (real Ray Data, MiniLM, SQLite, FAISS)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rag.config import init_workspace, load_workspace
from rag.errors import IngestError
from rag.index.store import IndexStore
from rag.ingest.pipeline import ingest
from rag.retrieve import Retriever

pytestmark = pytest.mark.integration

pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install 'raftsmith[ray]')")

REPO = Path(__file__).resolve().parents[4]
SAMPLE_DOCS = REPO / "examples" / "kestrel" / "docs"
QUERIES = ["Which TCP port does the relay listen on?", "How often is the fan filter replaced?",
           "What does error E-214 mean?", "How do I rotate the signing key?"]


def _workspace(root: Path, commit_every: int = 2048) -> Path:
    ws = init_workspace(root, corpus_name="kestrel")
    shutil.rmtree(ws.root / "docs")
    shutil.copytree(SAMPLE_DOCS, ws.root / "docs")
    text = ws.config_path.read_text()
    ws.config_path.write_text(text.replace("  commit_every: 2048", f"  commit_every: {commit_every}"))
    return ws.root


def _rows(root: Path) -> dict[str, tuple]:
    store = IndexStore(load_workspace(root / "raftsmith.yaml").index_dir, readonly=True)
    try:
        out = {}
        for chunk_id, source, heading, text, context, s, e, blob in store.con.execute(
                "SELECT chunk_id, source, heading, text, context, start_line, end_line, vector FROM chunks"):
            out[chunk_id] = (source, heading, text, context, s, e, store.decode_vec(blob))
        return out
    finally:
        store.close()


def _cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from rag.cli.main import main; main()", "ingest", *args,
                           "--config", str(root / "raftsmith.yaml")], capture_output=True, text=True,
                          env=dict(os.environ, RAY_USAGE_STATS_ENABLED="0"), timeout=600, check=False)


def test_two_ray_workers_make_the_single_machine_index(tmp_path: Path) -> None:
    local = _workspace(tmp_path / "local")
    on_ray = _workspace(tmp_path / "ray", commit_every=40)  # results arrive in several committed batches
    ingest(load_workspace(local / "raftsmith.yaml"))
    proc = _cli(on_ray, "--ray", "local", "--ray-workers", "2", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)  # stdout holds the report alone
    a, b = _rows(local), _rows(on_ray)
    assert report["counts"] == {"ok": len(list(SAMPLE_DOCS.iterdir())), "skipped": 0, "error": 0}
    assert report["embeddings_computed"] == report["total_chunks"] == len(a) > 100
    assert set(a) == set(b)
    for chunk_id, (*meta_a, va) in a.items():
        *meta_b, vb = b[chunk_id]
        assert meta_a == meta_b  # text, heading, context and line spans
        assert float(va @ vb) > 0.999  # the same model; batches of other sizes round differently
    with Retriever.from_workspace(load_workspace(local / "raftsmith.yaml")) as ra, \
            Retriever.from_workspace(load_workspace(on_ray / "raftsmith.yaml")) as rb:
        for q in QUERIES:
            assert [c.chunk_id for c in ra.search(q, k=5)] == [c.chunk_id for c in rb.search(q, k=5)]
    # a second run over the cluster finds every file unchanged and embeds nothing
    again = _cli(on_ray, "--ray", "local", "--ray-workers", "2", "--json")
    assert again.returncode == 0, again.stderr[-3000:]
    second = json.loads(again.stdout)
    assert second["embeddings_computed"] == 0 and {f["action"] for f in second["files"]} == {"unchanged"}
    store = IndexStore(load_workspace(on_ray / "raftsmith.yaml").index_dir, readonly=True)
    ids = np.fromiter((r[0] for r in store.con.execute("SELECT id FROM chunks")), dtype=np.int64)
    store.close()
    assert len(ids) == len(a)


def test_an_unreachable_cluster_is_a_clear_error_and_the_index_is_untouched(tmp_path: Path) -> None:
    root = _workspace(tmp_path / "ws")
    ws = load_workspace(root / "raftsmith.yaml")
    ingest(ws, [str(ws.root / "docs" / "overview.md")])
    before = _rows(root)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(IngestError, match=r"Cannot reach the Ray cluster at '127\.0\.0\.1:\d+'.*ray start --head"):
        ingest(ws, ray_address=f"127.0.0.1:{port}")
    assert _rows(root).keys() == before.keys()


def test_ray_workers_without_ray_is_a_usage_error(tmp_path: Path) -> None:
    proc = _cli(_workspace(tmp_path / "ws"), "--ray-workers", "2")
    assert proc.returncode != 0 and "--ray-workers goes with --ray ADDRESS" in proc.stderr
