"""What an index holds and takes: ``raftsmith index stats``.

Counts and settings come from the SQLite store and the FAISS file's meta.json; the query-side
RAM is measured, not estimated: the resident memory a fresh process gains while it loads the
FAISS index (what ``ask``, ``chat`` and ``serve`` hold beside the model; the SQLite store is
read from disk through the page cache).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from rag.errors import IndexStoreError
from rag.index.store import DB_NAME, FAISS_NAME, META_NAME, VECTOR_DTYPES, IndexStore


def _mb(path: Path) -> float | None:
    return round(path.stat().st_size / 1e6, 2) if path.is_file() else None


#: run in a fresh interpreter: the RSS a process gains loading the FAISS file (and its vector count)
_PROBE = """
import sys, psutil, faiss
p = psutil.Process()
before = p.memory_info().rss
index = faiss.read_index(sys.argv[1])
print((p.memory_info().rss - before) / 2**20, index.ntotal)
"""


def _faiss_ram(path: Path) -> tuple[float, int]:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _PROBE, str(path)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise IndexStoreError(f"Could not load {path} to measure it ({(proc.stderr or '').strip().splitlines()[-1:]}); "
                              "run 'raftsmith ingest' to write it again, or pass --no-ram.")
    mb, n = proc.stdout.split()
    return round(max(0.0, float(mb)), 1), int(n)


def index_stats(index_dir: Path, measure_ram: bool = True) -> dict[str, Any]:
    """The index in ``index_dir``: chunks, documents, vectors, FAISS kind and search settings,
    sizes on disk and (``measure_ram``) the RAM its FAISS index takes when loaded."""
    if not (index_dir / DB_NAME).is_file():
        raise IndexStoreError(f"No index at {index_dir}. Run 'raftsmith ingest' first (or check index.path).")
    store = IndexStore(index_dir, readonly=True)
    try:
        chunks = store.count_chunks()
        documents = int(store.con.execute("SELECT COUNT(*) FROM documents WHERE n_chunks > 0").fetchone()[0])
        empty = int(store.con.execute("SELECT COUNT(*) FROM documents WHERE n_chunks = 0").fetchone()[0])
        dim = int(store.get_meta("dim") or 0)
        out: dict[str, Any] = {
            "index": str(index_dir), "chunks": chunks, "documents": documents, "documents_without_chunks": empty,
            "embedding_model": store.get_meta("embedding_model"), "dim": dim,
            "vector_dtype": store.vector_dtype,
            "vector_bytes_per_chunk": dim * np.dtype(VECTOR_DTYPES[store.vector_dtype]).itemsize,
            "format": store.get_meta("schema_version"), "generation": store.get_meta("generation"),
            # set while an ingest runs; still set after one that stopped before it finished
            "ingest_unfinished_since": store.get_meta("ingest_started_at"),
        }
    finally:
        store.close()
    meta: dict[str, Any] = {}
    if (index_dir / META_NAME).is_file():
        try:
            meta = json.loads((index_dir / META_NAME).read_text(encoding="utf-8"))
        except ValueError:
            meta = {}
    search = {k: v for k, v in (meta.get("search") or {}).items() if k != "tried"}
    out.update({
        "faiss_kind": meta.get("faiss_kind"), "faiss_search": search or None,
        "tombstones": int(meta.get("tombstones", 0) or 0),
        "disk_mb": {"store": _mb(index_dir / DB_NAME), "faiss": _mb(index_dir / FAISS_NAME)},
        "faiss_stale": str(meta.get("generation")) != str(out["generation"]) if meta else True,
    })
    if measure_ram and (index_dir / FAISS_NAME).is_file():
        out["query_ram_mb"], out["faiss_vectors"] = _faiss_ram(index_dir / FAISS_NAME)
    return out


def describe(stats: dict[str, Any]) -> list[str]:
    """The lines ``raftsmith index stats`` prints."""
    disk = stats["disk_mb"]
    kind = stats["faiss_kind"] or "none saved"
    search = ", ".join(f"{k} {v}" for k, v in (stats["faiss_search"] or {}).items() if k in ("ef_search", "nprobe",
                                                                                               "recall_at_10"))
    removed = f", {stats['tombstones']} removed chunks not yet compacted" if stats["tombstones"] else ""
    faiss_mb = disk["faiss"] if disk["faiss"] is not None else "-"
    lines = [
        f"Index {stats['index']} (format {stats['format']}, generation {stats['generation']})",
        f"  {stats['chunks']} chunks from {stats['documents']} documents; embedder {stats['embedding_model']} "
        f"({stats['dim']}-d)",
        f"  vectors in SQLite: {stats['vector_dtype']}, {stats['vector_bytes_per_chunk']} bytes per chunk",
        f"  FAISS: {kind}{f' ({search})' if search else ''}{removed}",
        f"  on disk: store {disk['store']} MB, FAISS {faiss_mb} MB",
    ]
    if "query_ram_mb" in stats:
        lines.append(f"  RAM when loaded for queries: {stats['query_ram_mb']} MB (the FAISS index, measured; "
                     "the store is read from disk)")
    if stats.get("ingest_unfinished_since"):
        lines.append(f"  An ingest started {stats['ingest_unfinished_since']} has not finished (it is running, or it "
                     "stopped): its committed batches are in the store; run 'raftsmith ingest' to go on.")
    if stats["faiss_stale"]:
        lines.append("  The FAISS file is missing or older than the store: queries rebuild it in memory; "
                     "run 'raftsmith ingest' to save it again.")
    return lines
