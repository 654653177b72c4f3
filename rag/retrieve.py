"""Search the index: dense (FAISS cosine), BM25 (SQLite FTS5) or hybrid (reciprocal-rank or
score fusion, ``chat.fusion``), optionally aggregated by document (``chat.aggregate``).

``Retriever`` opens the index read-only and loads the embedding model only when a dense or
hybrid search (or ``embed``) first needs it, so BM25-only use never imports torch.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rag.errors import ConfigError, IndexStoreError
from rag.index.fusion import RRF_K, aggregate_groups, limit_per_group, rrf_fuse, score_fuse
from rag.index.store import (
    CHUNK_COLS,
    IndexStore,
    StoreVectors,
    build_faiss,
    build_faiss_from,
    load_faiss,
    search_vectors,
    set_search_params,
)
from rag.types import Chunk

if TYPE_CHECKING:
    import numpy as np

    from rag.config import ChatConfig, EmbeddingConfig, Workspace

log = logging.getLogger(__name__)

Mode = Literal["dense", "bm25", "hybrid"]
MODES = ("dense", "bm25", "hybrid")


def _row_to_chunk(row: tuple[Any, ...], score: float = 0.0) -> Chunk:
    _id, chunk_id, source, heading, start_line, end_line, page, text = row
    meta: dict[str, Any] = {}
    if page is not None:
        meta["page"] = int(page)
    return Chunk(chunk_id=chunk_id, source=source, heading=heading, start_line=int(start_line),
                 end_line=int(end_line), text=text, score=float(score), meta=meta)


class Retriever:
    """Read-only access to one workspace's index."""

    #: with ``diverse=True``, at most this many chunks come from one source
    max_per_source = 2
    #: candidates taken from each ranker before fusion (at least this many, or 4 * k)
    fusion_depth = 50

    def __init__(self, index_dir: Path, embedding: EmbeddingConfig, root: Path | None = None,
                 chat: ChatConfig | None = None, check_model: bool = True):
        self.index_dir = Path(index_dir)
        #: hybrid fusion ('rrf' | 'scores'), the dense ranker's weight, and document aggregation
        self.fusion = chat.fusion if chat else "rrf"
        self.dense_weight = chat.dense_weight if chat else 0.5
        self.aggregate = chat.aggregate if chat else "chunk"
        self.bm25_budget = chat.bm25_budget if chat else None  # None: the store's default
        self._embedding_cfg = embedding
        self._root = root
        self.store = IndexStore(self.index_dir, readonly=True)
        self._embedder: Any = None
        self._faiss: Any = None
        self._no_dense_scores = False  # set once the embedder failed to load for BM25 scores
        self._lock = threading.RLock()  # one SQLite connection, shared by server threads
        stored_model = self.store.get_meta("embedding_model")
        wanted = embedding.model or "default"
        if check_model and stored_model is not None and stored_model != wanted:
            raise ConfigError(
                f"The index at {self.index_dir} was built with embedding.model '{stored_model}' but the config "
                f"says '{wanted}'. Set embedding.model back, or run 'raftsmith ingest' to rebuild the index."
            )
        from rag.index.embedder import vector_family

        stored_family = self.store.get_meta("embedding_vectors") or "float"
        if stored_family != vector_family(embedding.backend):
            log.warning("the index at %s holds %s vectors but embedding.backend '%s' makes %s ones: results may "
                        "differ slightly; run 'raftsmith ingest' to re-embed, or set embedding.backend back",
                        self.index_dir, stored_family, embedding.backend, vector_family(embedding.backend))

    @classmethod
    def from_workspace(cls, ws: Workspace) -> Retriever:
        return cls(ws.index_dir, ws.config.embedding, ws.root, ws.config.chat)

    # --- lazy heavy parts -----------------------------------------------------------------
    @property
    def embedder(self) -> Any:
        if self._embedder is None:
            from rag.index.embedder import load_embedder

            self._embedder = load_embedder(self._embedding_cfg, self._root)
        return self._embedder

    def _index(self) -> Any:
        if self._faiss is None:
            generation = self.store.get_meta("generation")
            loaded = load_faiss(self.index_dir)
            meta: dict[str, Any] = {}
            if loaded is not None and str(loaded[1].get("generation")) == generation:
                self._faiss, meta = loaded
            else:
                log.warning("FAISS index in %s is missing or stale; rebuilding it in memory", self.index_dir)
                source = StoreVectors(self.store)
                dim = source.dim or int(self.store.get_meta("dim") or 384)
                self._faiss = build_faiss_from(source, self.store.get_meta("faiss_kind") or "flat", dim)
                if loaded is not None:
                    meta = {"search": loaded[1].get("search") or {}}
            set_search_params(self._faiss, meta)
        return self._faiss

    # --- public API -------------------------------------------------------------------------
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(n, d) float32, L2-normalized."""
        return self.embedder.encode(list(texts))

    def search(self, query: str, k: int = 5, mode: str = "hybrid", diverse: bool = False,
               dense_scores: bool = False) -> list[Chunk]:
        return self.search_many([query], k=k, mode=mode, diverse=diverse, dense_scores=dense_scores)[0]

    def search_many(self, queries: Sequence[str], k: int = 5, mode: str = "hybrid",
                    diverse: bool = False, dense_scores: bool = False) -> list[list[Chunk]]:
        """Top-k chunks per query. Dense and hybrid results carry ``meta['dense_score']``
        (query-chunk cosine); ``dense_scores=True`` adds it to BM25 results too, so the
        answerer's relevance threshold works in every mode."""
        if mode not in MODES:
            raise ConfigError(f"Unknown search mode '{mode}'; use one of: {', '.join(MODES)}.")
        if k < 1:
            raise ConfigError("k must be at least 1.")
        queries = list(queries)
        if not queries:
            return []
        qvecs = self.embed(queries) if mode in ("dense", "hybrid") else None
        if qvecs is None and dense_scores and not self._no_dense_scores:
            try:
                qvecs = self.embed(queries)
            except ConfigError as err:
                # BM25 needs no embedder: without one the hits simply carry no cosine (and
                # pass any relevance gate), instead of the search failing.
                self._no_dense_scores = True
                log.warning("BM25 results get no relevance scores: %s", err)
        with self._lock:
            return [self._search_one(q, None if qvecs is None else qvecs[i], k, mode, diverse)
                    for i, q in enumerate(queries)]

    def get(self, chunk_id: str) -> Chunk | None:
        with self._lock:
            row = self.store.row_by_chunk_id(chunk_id)
        return None if row is None else _row_to_chunk(row)

    def all_chunks(self) -> list[Chunk]:
        with self._lock:
            return [_row_to_chunk(r) for r in self.store.all_rows()]

    def close(self) -> None:
        with self._lock:
            self.store.close()
            self._faiss = None

    def __enter__(self) -> Retriever:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals --------------------------------------------------------------------------
    def _dense(self, qvec: np.ndarray, depth: int) -> list[tuple[int, float]]:
        import faiss
        import numpy as np

        index = self._index()
        if index.ntotal == 0:
            return []
        # One query is fastest on one thread: OpenMP workers spinning on a busy CPU made
        # single searches 10-100x slower in measurements here (benchmarks/retrieval.py).
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            scores, ids = search_vectors(index, np.asarray(qvec, dtype=np.float32).reshape(1, -1),
                                         min(depth, index.ntotal), self._exact_vectors)
        finally:
            faiss.omp_set_num_threads(threads)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]

    def _search_one(self, query: str, qvec: np.ndarray | None, k: int, mode: str, diverse: bool) -> list[Chunk]:
        depth = max(self.fusion_depth, 4 * k)
        # dense always over-fetches: an HNSW index may hold tombstones of removed chunks
        dense = self._dense(qvec, depth) if (qvec is not None and mode != "bm25") else []
        grouped = self.aggregate == "document"
        deep = mode == "hybrid" or diverse or grouped
        bm25 = self.store.bm25(query, depth if deep else k, self.bm25_budget) if mode in ("bm25", "hybrid") else []
        dense_rank = {i: r for r, (i, _) in enumerate(dense, start=1)}
        bm25_rank = {i: r for r, (i, _) in enumerate(bm25, start=1)}
        if mode == "dense":
            ranked = dense
        elif mode == "bm25":
            ranked = bm25
        elif self.fusion == "scores":
            ranked = score_fuse(dense, bm25, self.dense_weight)
        else:
            w = self.dense_weight
            ranked = rrf_fuse([[i for i, _ in dense], [i for i, _ in bm25]], k=RRF_K, weights=(2 * w, 2 * (1 - w)))
        rows = self.store.rows_by_ids([i for i, _ in ranked])
        chunks: list[Chunk] = []
        for i, score in ranked:
            row = rows.get(i)
            if row is None:  # FAISS and SQLite briefly out of step: skip, never return garbage
                continue
            c = _row_to_chunk(row, score)
            c.meta["mode"] = mode
            if i in dense_rank:
                c.meta["dense_rank"] = dense_rank[i]
            if i in bm25_rank:
                c.meta["bm25_rank"] = bm25_rank[i]
            c.meta["_id"] = i
            chunks.append(c)
        if grouped:
            chunks = aggregate_groups(chunks, lambda c: c.source)
        if diverse:
            chunks = limit_per_group(chunks, lambda c: c.source, self.max_per_source)
        chunks = chunks[:k]
        if qvec is not None:
            self._attach_dense_scores(chunks, qvec, dict(dense))
        for c in chunks:
            c.meta.pop("_id", None)
        return chunks

    def _exact_vectors(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of ``ids`` (rescoring an IVF-PQ index's candidates); a removed id
        (a tombstone) gets a zero vector, so it ranks last and is dropped with the rows."""
        import numpy as np

        vecs = self._vectors_for_ids([int(i) for i in ids])
        dim = self._faiss.d
        return np.stack([vecs.get(int(i), np.zeros(dim, dtype=np.float32)) for i in ids]).astype(np.float32)

    def _vectors_for_ids(self, ids: list[int]) -> dict[int, np.ndarray]:
        """Row id -> the chunk's vector as the dense index holds it (ids not stored are left out)."""
        return self.store.vectors_for_ids(ids)

    def _attach_dense_scores(self, chunks: list[Chunk], qvec: np.ndarray, known: dict[int, float]) -> None:
        missing = [c.meta["_id"] for c in chunks if c.meta["_id"] not in known]
        if missing:
            for i, vec in self._vectors_for_ids(missing).items():
                known[i] = float(vec @ qvec)
        for c in chunks:
            s = known.get(c.meta["_id"])
            if s is not None:
                c.meta["dense_score"] = round(s, 6)


class ReembeddedRetriever(Retriever):
    """One index (its chunks and BM25 as they are) searched with another embedding model: every
    chunk is embedded again, in memory, as ingest embeds it, into an exact (flat) index. For
    comparing embedders side by side (``raftsmith eval --retrieval``); nothing is written."""

    def __init__(self, index_dir: Path, embedding: EmbeddingConfig, root: Path | None = None,
                 chat: ChatConfig | None = None):
        super().__init__(index_dir, embedding, root, chat, check_model=False)
        import numpy as np

        with self._lock:
            rows = list(self.store.con.execute(f"SELECT {CHUNK_COLS} FROM chunks ORDER BY id"))
        contexts = stored_contexts(self)
        ids = np.asarray([int(r[0]) for r in rows], dtype=np.int64)
        texts = [chunk_embed_text(_row_to_chunk(r), contexts.get(str(r[1]), "")) for r in rows]
        vecs = self.embed(texts) if texts else np.zeros((0, self.embedder.dim), dtype=np.float32)
        self._vecs = {int(i): v for i, v in zip(ids, vecs, strict=True)}
        self._faiss = build_faiss(ids, vecs, "flat", self.embedder.dim)

    def _index(self) -> Any:
        return self._faiss

    def _vectors_for_ids(self, ids: list[int]) -> dict[int, np.ndarray]:
        return {i: self._vecs[i] for i in ids if i in self._vecs}


def stored_contexts(retriever: Retriever) -> dict[str, str]:
    """chunk_id -> the document context the index embedded with it (index format 2; none before)."""
    import sqlite3

    with retriever._lock:
        try:
            rows = retriever.store.con.execute("SELECT chunk_id, context FROM chunks").fetchall()
        except sqlite3.OperationalError:  # an index without the context column embeds none
            return {}
    return {str(cid): str(ctx or "") for cid, ctx in rows}


def chunk_embed_text(c: Chunk, context: str = "") -> str:
    """A stored chunk's text as the ingest pipeline embeds it (same function, same input:
    heading, text and the document context the index stored beside the chunk)."""
    from rag.ingest.chunker import ChunkSpec
    from rag.ingest.context import embed_text

    spec = ChunkSpec(chunk_id=c.chunk_id, heading=c.heading, text=c.text, start_char=0, end_char=len(c.text),
                     byte_start=0, byte_end=0, start_line=c.start_line, end_line=c.end_line, n_tokens=0,
                     page=c.meta.get("page"), context=context)
    return embed_text(spec)


def open_retriever(ws: Workspace) -> Retriever:
    """Convenience alias used by the CLI."""
    if not (ws.index_dir / "store.sqlite").is_file():
        raise IndexStoreError(f"No index at {ws.index_dir}. Run 'raftsmith ingest' first.")
    return Retriever.from_workspace(ws)
