"""Bring ``index.faiss`` up to the store's generation after an ingest, in place where the kind
allows it (see :func:`update_faiss`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rag.index.store import (
    BLOCK,
    FAISS_NAME,
    IndexStore,
    StoreVectors,
    build_faiss_from,
    calibrate_from,
    index_kind,
    load_faiss,
    save_faiss,
    saved_meta,
)

if TYPE_CHECKING:
    from rag.config import Workspace

TOMBSTONE_LIMIT = 0.2


#: an IVF index is updated in place while the chunks stay within this factor of what it was trained on
IVF_RETRAIN_FACTOR = 2.0


def update_faiss(ws: Workspace, store: IndexStore, *, kind: str, dim: int, generation: int, old_generation: int,
                  new_ids: Sequence[int], removed_ids: Sequence[int], full: bool, n_total: int) -> None:
    """Bring index.faiss to ``generation``. Flat: rebuilt from SQLite, a block of vectors at a
    time (seconds even at 100k). HNSW (slow to build, no deletes): new vectors are added to the
    saved graph and removed ids stay as tombstones that searches skip (SQLite has no row for
    them), until tombstones pass 20% of the chunks and the graph is rebuilt. IVF and IVF-PQ
    (trained on a sample, slow to re-add millions): removed ids leave their lists and new
    vectors are encoded with the trained centroids, until the chunks pass half or twice the
    count it was trained on; then it is trained and calibrated again. A FAISS file left behind by
    a stopped ingest (its generation is not the one before this run) is rebuilt."""
    saved = saved_meta(ws.index_dir)
    if saved is not None and str(saved.get("generation")) == str(generation) and (ws.index_dir / FAISS_NAME).is_file():
        return
    in_step = (not full and saved is not None and saved.get("faiss_kind") == kind
               and str(saved.get("generation")) == str(old_generation))
    trained_n = int((saved or {}).get("trained_n") or 0)
    ivf_in_step = (in_step and kind in ("ivf", "ivfpq") and trained_n > 0
                   and trained_n / IVF_RETRAIN_FACTOR <= n_total <= trained_n * IVF_RETRAIN_FACTOR)
    meta: dict[str, Any] = {
        "format": f"raftsmith-index/{store.get_meta('schema_version')}", "generation": generation, "n_chunks": n_total, "dim": dim,
        "embedding_model": ws.config.embedding.model, "faiss_kind": kind, "tombstones": 0,
        "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    existing = load_faiss(ws.index_dir) if (in_step and kind == "hnsw") or ivf_in_step else None
    if existing is not None:
        index, old_meta = existing
        tombstones = int(old_meta.get("tombstones", 0)) + len(removed_ids)
        if kind != "hnsw" or tombstones <= TOMBSTONE_LIMIT * max(n_total, 1):
            if kind == "hnsw":
                meta["tombstones"] = tombstones
            else:
                import numpy as np

                if len(removed_ids):
                    index.remove_ids(np.asarray(removed_ids, dtype=np.int64))
                meta["trained_n"] = trained_n
                meta["updated_in_place"] = int(old_meta.get("updated_in_place", 0)) + 1
            _add_vectors(store, index, new_ids)
            if old_meta.get("search"):
                meta["search"] = old_meta["search"]
            save_faiss(ws.index_dir, index, meta)
            return
    del existing
    source = StoreVectors(store)
    index = build_faiss_from(source, kind, dim, ws.config.index.memory_budget_mb)
    search = calibrate_from(index, source, ws.config.index.recall_target)
    if search:
        meta["search"] = search
    if index_kind(index) in ("ivf", "ivfpq"):
        meta["trained_n"] = n_total
    save_faiss(ws.index_dir, index, meta)


def _add_vectors(store: IndexStore, index: Any, new_ids: Sequence[int]) -> None:
    import numpy as np

    for start in range(0, len(new_ids), BLOCK):
        part = np.asarray(new_ids[start:start + BLOCK], dtype=np.int64)
        index.add_with_ids(store.vector_matrix(part), part)
