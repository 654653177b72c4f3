"""The on-disk index: SQLite (documents, chunks with all metadata and vectors, FTS5 for BM25)
plus a FAISS file derived from the vectors in SQLite.

SQLite is the source of truth; ``index.faiss`` is rebuilt from it on every save and carries
the same ``generation`` number (in meta.json), so a reader that finds the two out of step
rebuilds the FAISS index in memory instead of returning wrong chunks. Vectors are raw
float32 bytes, never pickles. Writers hold an exclusive ``fcntl`` lock on ``.lock``.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import logging
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag.errors import IndexStoreError
from rag.fsutil import atomic_path, atomic_write

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

DB_NAME = "store.sqlite"
FAISS_NAME = "index.faiss"
META_NAME = "meta.json"
LOCK_NAME = ".lock"
#: 2: chunks.context, FTS5 columns context and terms (identifier forms); 3: vectors in float16
#: (meta vector_dtype). A format-2 index is read and written as it is (float32 vectors); an
#: older raftsmith refuses a format-3 one instead of misreading its vectors.
SCHEMA_VERSION = 3
MIN_SCHEMA_VERSION = 2  # older indexes are rebuilt from the documents (ingest --rebuild)
HNSW_THRESHOLD = 50_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    source TEXT PRIMARY KEY, sha256 TEXT, mtime REAL, size INTEGER, kind TEXT,
    status TEXT NOT NULL, reason TEXT, n_chunks INTEGER NOT NULL DEFAULT 0, updated_at REAL
);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY, chunk_id TEXT NOT NULL UNIQUE, source TEXT NOT NULL,
    heading TEXT NOT NULL, start_line INTEGER NOT NULL, end_line INTEGER NOT NULL,
    page INTEGER, byte_start INTEGER NOT NULL, byte_end INTEGER NOT NULL, text TEXT NOT NULL,
    context TEXT NOT NULL DEFAULT '', n_tokens INTEGER NOT NULL, embed_sha TEXT NOT NULL,
    vector BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_source ON chunks(source);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(heading, text, context, terms, tokenize='porter unicode61');
"""
_DROP = "DROP TABLE IF EXISTS chunks_fts; DROP TABLE IF EXISTS chunks; DELETE FROM documents;"

#: BM25 column weights: heading, text, document context, identifier forms
BM25_WEIGHTS = (2.0, 1.0, 0.5, 1.0)
#: above this many chunks a BM25 query leaves out its most common terms beyond the budget below
BM25_BUDGET_FROM = 100_000
#: most chunks one BM25 query scores (summed over the terms kept; see IndexStore.bm25_plan)
BM25_POSTINGS_BUDGET = 10_000
#: a query term's chunks are counted up to this many times the budget (past it: "very common")
BM25_COUNT_CAP = 20
REBUILD_HINT = ("Run 'raftsmith ingest --rebuild' to rebuild it from your documents (for an installed bundle: "
                "on the home machine, then make and install a new bundle).")

CHUNK_COLS = "id, chunk_id, source, heading, start_line, end_line, page, text"


@dataclass
class ChunkRow:
    """One chunk ready to store (vector computed or reused)."""

    chunk_id: str
    source: str
    heading: str
    start_line: int
    end_line: int
    page: int | None
    byte_start: int
    byte_end: int
    text: str
    n_tokens: int
    embed_sha: str
    context: str = ""  # document-level text a chunk lacks on its own: embedded and BM25-indexed, never shown


@contextlib.contextmanager
def writer_lock(index_dir: Path) -> Iterator[None]:
    """Exclusive, non-blocking writer lock; released by the OS if the process dies."""
    index_dir.mkdir(parents=True, exist_ok=True)
    fh = open(index_dir / LOCK_NAME, "a+")  # noqa: SIM115 - held for the with-block
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise IndexStoreError(
                f"The index at {index_dir} is locked by another writer (a running 'raftsmith ingest'?). "
                "Wait for it to finish and run the command again."
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        fh.close()


#: how a store keeps its vectors (meta ``vector_dtype``); a store without the key holds float32
VECTOR_DTYPES = {"float32": "<f4", "float16": "<f2"}
#: what a new (or rebuilt) index stores: half the bytes of float32, and the FAISS index built
#: from them ranks as the float32 one does (cosine error ~1e-4; benchmarks/index_scale.py)
NEW_VECTOR_DTYPE = "float16"


# An identifier: word parts joined by '.', '_', '::', '/' or '-' (torch.hub.load, listen_port,
# std::vector, kx-7), or one word with an inner capital (MultipleNegativesRankingLoss).
_IDENT = re.compile(r"[A-Za-z0-9]+(?:(?:::|[._/-])[A-Za-z0-9]+)+|[A-Za-z0-9]*[a-z0-9][A-Z][A-Za-z0-9]*")
_CAMEL = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
_WORD = re.compile(r"\w+")


def identifier_forms(text: str) -> list[str]:
    """Extra lexical forms of the identifiers in ``text``, for the FTS5 ``terms`` column.

    FTS5's tokenizer already splits ``torch.hub.load`` and ``listen_port`` into their parts;
    what it loses is the whole identifier, and it keeps ``MultipleNegativesRankingLoss`` as one
    token. So each identifier adds its joined form (``torchhubload``) and, for CamelCase, its
    parts (``multiple negatives ranking loss``). Order is first appearance; no duplicates.
    """
    out: list[str] = []
    seen: set[str] = set()

    def add(form: str) -> None:
        if 1 < len(form) <= 80 and form not in seen:
            seen.add(form)
            out.append(form)

    for m in _IDENT.finditer(text):
        ident = m.group(0)
        parts = [p for p in re.split(r"::|[._/-]", ident) if p]
        if len(parts) > 1:
            add("".join(parts).lower())
        for p in parts:
            camel = _CAMEL.findall(p)
            if len(camel) > 1:
                for c in camel:
                    add(c.lower())
    return out


def query_terms(text: str) -> list[str]:
    """The words of free text, lowercased, then the whole and CamelCase forms of its identifiers;
    first appearance order, no duplicates."""
    seen: list[str] = []
    for w in [*_WORD.findall(text.lower()), *identifier_forms(text)]:
        if w not in seen:
            seen.append(w)
    return seen


def fts_query(text: str | list[str]) -> str:
    """A safe FTS5 MATCH expression from free text (or :func:`query_terms`): every word quoted,
    OR-ed together, plus the whole and CamelCase forms of identifiers (matched in the ``terms``
    column)."""
    terms = query_terms(text) if isinstance(text, str) else text
    return " OR ".join(f'"{w}"' for w in terms)


class IndexStore:
    """SQLite side of the index. ``readonly=True`` opens without any write access."""

    def __init__(self, index_dir: Path, readonly: bool = False):
        self.index_dir = Path(index_dir)
        self.db_path = self.index_dir / DB_NAME
        self.readonly = readonly
        #: a writable store over an index of an older format: only a full rebuild may write it
        self.outdated = False
        #: when a list, delete_chunks() appends the ids it removes (ingest updates IVF indexes in place)
        self.deleted_ids: Any = None
        #: (term, cap) -> chunks holding the term, for budgeted BM25 queries (bm25_plan)
        self._term_counts: dict[tuple[str, int], int] = {}
        if readonly:
            if not self.db_path.is_file():
                raise IndexStoreError(
                    f"No index at {self.index_dir}. Run 'raftsmith ingest' first (or check index.path)."
                )
            uri = f"file:{self.db_path}?mode=ro"
            self.con = sqlite3.connect(uri, uri=True, check_same_thread=False)
        else:
            self.index_dir.mkdir(parents=True, exist_ok=True)
            self.con = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False)
            self.con.execute("PRAGMA journal_mode=DELETE")
            self.con.execute("PRAGMA synchronous=FULL")
        try:
            if not readonly:
                self.con.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            version = self.get_meta("schema_version")
        except sqlite3.DatabaseError as err:
            self.con.close()
            raise IndexStoreError(f"{self.db_path} is not a readable raftsmith index ({err}); delete the folder and re-ingest.") from None
        if version is not None and int(version) > SCHEMA_VERSION:
            self.con.close()
            raise IndexStoreError(f"{self.db_path} was written by a newer raftsmith; upgrade raftsmith to read it.")
        if version is not None and int(version) < MIN_SCHEMA_VERSION:
            if readonly:
                self.con.close()
                raise IndexStoreError(
                    f"The index at {self.index_dir} has format {version}; this raftsmith reads formats "
                    f"{MIN_SCHEMA_VERSION}-{SCHEMA_VERSION} (chunks indexed with their document context). {REBUILD_HINT}"
                )
            self.outdated = True  # ingest rebuilds it (reset() in its first commit); nothing else writes
        elif not readonly:
            self.con.executescript(_SCHEMA)
            if version is None:
                self.set_meta("schema_version", str(SCHEMA_VERSION))
                self.set_meta("generation", "0")
                self.set_meta("vector_dtype", NEW_VECTOR_DTYPE)
        try:
            #: the dtype of every vector blob in this store
            self.vector_dtype = self._stored_dtype()
        except IndexStoreError:
            self.con.close()
            raise

    def _stored_dtype(self) -> str:
        version = int(self.get_meta("schema_version") or SCHEMA_VERSION)
        stored = self.get_meta("vector_dtype") or (NEW_VECTOR_DTYPE if version >= 3 else "float32")
        if stored not in VECTOR_DTYPES:
            raise IndexStoreError(f"{self.db_path} stores vectors as '{stored}', which this raftsmith cannot read; "
                                  "upgrade raftsmith, or run 'raftsmith ingest --rebuild'.")
        return stored

    @property
    def newest_format(self) -> bool:
        """Whether this store has this raftsmith's schema and vector dtype (else reset() gives it them)."""
        return self.get_meta("schema_version") == str(SCHEMA_VERSION) and self.vector_dtype == NEW_VECTOR_DTYPE

    def reset(self) -> None:
        """Empty the index and give it this version's schema (inside the caller's transaction:
        a rebuild that fails leaves the old index as it was)."""
        if self.readonly:
            raise IndexStoreError("reset() needs a writable store")
        for stmt in (_DROP + _SCHEMA).split(";"):
            if stmt.strip():
                self.con.execute(stmt)
        self.set_meta("schema_version", str(SCHEMA_VERSION))
        self.set_meta("vector_dtype", NEW_VECTOR_DTYPE)
        self.vector_dtype = NEW_VECTOR_DTYPE
        self.outdated = False

    def encode_vec(self, v: np.ndarray) -> bytes:
        """A vector as this store keeps it."""
        import numpy as np

        return np.ascontiguousarray(v, dtype=VECTOR_DTYPES[self.vector_dtype]).tobytes()

    def decode_vec(self, blob: bytes) -> np.ndarray:
        """A stored vector, as float32."""
        import numpy as np

        return np.frombuffer(blob, dtype=VECTOR_DTYPES[self.vector_dtype]).astype(np.float32)

    def close(self) -> None:
        self.con.close()

    # --- meta -----------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self.con.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self.con.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        self.con.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.con.execute("ROLLBACK")
            self.vector_dtype = self._stored_dtype()  # a rolled-back reset() leaves the old vectors
            raise
        self.con.execute("COMMIT")

    # --- documents --------------------------------------------------------------------------
    def document(self, source: str) -> dict[str, Any] | None:
        cur = self.con.execute("SELECT * FROM documents WHERE source=?", (source,))
        row = cur.fetchone()
        if row is None:
            return None
        return dict(zip([d[0] for d in cur.description], row, strict=True))

    def sources(self) -> list[str]:
        return [r[0] for r in self.con.execute("SELECT source FROM documents ORDER BY source")]

    def put_document(self, source: str, *, sha256: str | None, mtime: float | None, size: int | None,
                     kind: str | None, status: str, reason: str | None, n_chunks: int) -> None:
        self.con.execute(
            "INSERT OR REPLACE INTO documents(source, sha256, mtime, size, kind, status, reason, n_chunks, updated_at)"
            " VALUES (?,?,?,?,?,?,?,?,?)",
            (source, sha256, mtime, size, kind, status, reason, n_chunks, time.time()),
        )

    def delete_document(self, source: str) -> int:
        removed = self.delete_chunks(source)
        self.con.execute("DELETE FROM documents WHERE source=?", (source,))
        return removed

    # --- chunks -----------------------------------------------------------------------------
    def vectors_by_embed_sha(self, source: str) -> dict[str, np.ndarray]:
        rows = self.con.execute("SELECT embed_sha, vector FROM chunks WHERE source=?", (source,))
        return {sha: self.decode_vec(blob) for sha, blob in rows}

    def delete_chunks(self, source: str) -> int:
        ids = [r[0] for r in self.con.execute("SELECT id FROM chunks WHERE source=?", (source,))]
        if self.deleted_ids is not None:
            self.deleted_ids.extend(ids)
        if ids:
            self.con.executemany("DELETE FROM chunks_fts WHERE rowid=?", [(i,) for i in ids])
            self.con.execute("DELETE FROM chunks WHERE source=?", (source,))
        return len(ids)

    def insert_chunks(self, rows: Iterable[tuple[ChunkRow, np.ndarray]]) -> list[int]:
        """Insert chunks with their vectors; returns their integer ids (the FAISS ids)."""
        ids: list[int] = []
        for row, vec in rows:
            blob = self.encode_vec(vec)
            if self.outdated:
                raise IndexStoreError(f"The index at {self.index_dir} has an older format. {REBUILD_HINT}")
            cur = self.con.execute(
                "INSERT INTO chunks(chunk_id, source, heading, start_line, end_line, page, byte_start, byte_end,"
                " text, context, n_tokens, embed_sha, vector) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (row.chunk_id, row.source, row.heading, row.start_line, row.end_line, row.page,
                 row.byte_start, row.byte_end, row.text, row.context, row.n_tokens, row.embed_sha, blob),
            )
            terms = " ".join(identifier_forms(f"{row.heading}\n{row.text}\n{row.context}"))
            self.con.execute("INSERT INTO chunks_fts(rowid, heading, text, context, terms) VALUES (?,?,?,?,?)",
                             (cur.lastrowid, row.heading, row.text, row.context, terms))
            ids.append(int(cur.lastrowid or 0))
        return ids

    def count_chunks(self) -> int:
        return int(self.con.execute("SELECT COUNT(*) FROM chunks").fetchone()[0])

    def rows_by_ids(self, ids: Iterable[int]) -> dict[int, tuple[Any, ...]]:
        ids = list(ids)
        out: dict[int, tuple[Any, ...]] = {}
        for start in range(0, len(ids), 500):
            part = ids[start:start + 500]
            marks = ",".join("?" * len(part))
            for row in self.con.execute(f"SELECT {CHUNK_COLS} FROM chunks WHERE id IN ({marks})", part):
                out[int(row[0])] = row
        return out

    def row_by_chunk_id(self, chunk_id: str) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self.con.execute(
            f"SELECT {CHUNK_COLS} FROM chunks WHERE chunk_id=?", (chunk_id,)).fetchone()
        return row

    def all_rows(self) -> list[tuple[Any, ...]]:
        return list(self.con.execute(f"SELECT {CHUNK_COLS} FROM chunks ORDER BY source, start_line, byte_start"))

    def vectors_for_ids(self, ids: list[int]) -> dict[int, np.ndarray]:
        """Row id -> its vector (float32); ids not in the store are left out."""
        out: dict[int, np.ndarray] = {}
        for start in range(0, len(ids), 500):
            part = ids[start:start + 500]
            marks = ",".join("?" * len(part))
            for i, blob in self.con.execute(f"SELECT id, vector FROM chunks WHERE id IN ({marks})", part):
                out[int(i)] = self.decode_vec(blob)
        return out

    def vector_matrix(self, ids: Iterable[int]) -> np.ndarray:
        """The vectors of ``ids`` as rows of a float32 matrix, in that order; every id must be stored."""
        import numpy as np

        wanted = [int(i) for i in ids]
        found = self.vectors_for_ids(wanted)
        if len(found) != len(set(wanted)):
            raise IndexStoreError(f"The index at {self.index_dir} changed while it was read; run the command again.")
        return np.stack([found[i] for i in wanted]).astype(np.float32, copy=False)

    def all_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """Every (id, float32 vector), ascending by id, in memory (small indexes and tests; the
        ingest and the in-memory rebuild read blocks through :class:`StoreVectors`)."""
        import numpy as np

        rows = self.con.execute("SELECT id, vector FROM chunks ORDER BY id").fetchall()
        if not rows:
            return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
        return self.decode_block(rows)

    def decode_block(self, rows: list[tuple[int, bytes]], width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, float32 matrix) of ``(id, blob)`` rows whose blobs must all be ``width`` bytes
        (default: the first one's)."""
        import numpy as np

        dtype = np.dtype(VECTOR_DTYPES[self.vector_dtype])
        width = width or len(rows[0][1])
        joined = b"".join(blob for _, blob in rows)
        if len(joined) != len(rows) * width or width % dtype.itemsize:
            raise IndexStoreError(f"The vectors in {self.db_path} do not all have one size (an index written by "
                                  f"two raftsmith versions?). {REBUILD_HINT}")
        mat = np.frombuffer(joined, dtype=dtype).reshape(len(rows), -1).astype(np.float32)
        return np.asarray([int(i) for i, _ in rows], dtype=np.int64), mat

    def bm25(self, query: str, limit: int, budget: int | None = None) -> list[tuple[int, float]]:
        """(row id, score) best first; score = -bm25 so higher is better.

        FTS5 scores every chunk that holds any query term, so on a large index a query with
        common words costs time in proportion to their postings (~1-3 us a chunk here: a
        second for 8 words at 10M chunks). Above ``BM25_BUDGET_FROM`` chunks :meth:`bm25_plan`
        keeps the query's rarest terms within ``budget`` postings (``chat.bm25_budget``,
        default ``BM25_POSTINGS_BUDGET``; 0 = every term, always)."""
        terms = query_terms(query)
        if not terms:
            return []
        budget = BM25_POSTINGS_BUDGET if budget is None else budget
        exprs = [fts_query(terms)]
        if budget and len(terms) > 1 and self._chunk_rows() > BM25_BUDGET_FROM:
            kept, conjunctive = self.bm25_plan(terms, budget)
            # every kept term over the budget: the chunks holding two of them first (BM25's best:
            # they add two terms' weights), then, if those are fewer than asked, the rarest term's
            exprs = ([" OR ".join(f'("{a}" AND "{b}")' for a, b in itertools.combinations(kept, 2)), f'"{kept[0]}"']
                     if conjunctive else [fts_query(kept)])
        out: dict[int, float] = {}
        for expr in exprs:
            rows = self.con.execute(
                f"SELECT rowid, bm25(chunks_fts, {', '.join(map(str, BM25_WEIGHTS))}) AS s FROM chunks_fts"
                " WHERE chunks_fts MATCH ? ORDER BY s LIMIT ?",
                (expr, limit),
            )
            for r, sc in rows:
                out.setdefault(int(r), -float(sc))
            if len(out) >= limit:
                break
        return list(out.items())[:limit]

    def bm25_plan(self, terms: list[str], budget: int) -> tuple[list[str], bool]:
        """(terms kept, conjunctive) for a budgeted BM25 query.

        Terms are kept rarest first while their chunk counts add up to at most ``budget``, in
        the query's order: the ones left out are those BM25 weighs least (lowest IDF), like
        stopwords found from the index. When even the rarest is over the budget, the three
        rarest are kept, rarest first, to be matched two at a time (``conjunctive``). Counts
        are FTS5's own matches (stemming included), read up to ``BM25_COUNT_CAP`` times the
        budget and kept for this store's life: ~0.1 us a posting, paid once per term."""
        cap = BM25_COUNT_CAP * max(budget, 1)
        counts = {t: self._term_chunks(t, cap) for t in terms}
        order = sorted(terms, key=lambda t: counts[t])
        if counts[order[0]] > budget:
            return order[:3], len(order) > 1
        kept: set[str] = set()
        total = 0
        for t in order:
            if total + counts[t] > budget:
                break
            kept.add(t)
            total += counts[t]
        return [t for t in terms if t in kept], False

    def _term_chunks(self, term: str, cap: int) -> int:
        """How many chunks hold ``term``, counted up to ``cap`` (cached)."""
        key = (term, cap)
        if key not in self._term_counts:
            if len(self._term_counts) > 100_000:
                self._term_counts.clear()
            row = self.con.execute("SELECT count(*) FROM (SELECT 1 FROM chunks_fts WHERE chunks_fts MATCH ? LIMIT ?)",
                                   (f'"{term}"', cap)).fetchone()
            self._term_counts[key] = int(row[0])
        return self._term_counts[key]

    def _chunk_rows(self) -> int:
        """About how many chunks the store holds (the highest row id: instant at any size)."""
        row = self.con.execute("SELECT max(id) FROM chunks").fetchone()
        return int(row[0] or 0)


# --- FAISS --------------------------------------------------------------------------------
#: index.kind: auto picks by size and index.memory_budget_mb; the others force one kind
FAISS_KINDS = ("flat", "hnsw", "ivf", "ivfpq")
#: auto: HNSW (float16 vectors in RAM) up to this many chunks, if it fits the budget; IVF-PQ above
HNSW_MAX = 3_000_000
HNSW_M = 32
#: IVF-PQ: sub-quantizers (bytes per vector at 8 bits); 384 / 48 = 8 dims each
PQ_BYTES = 48
#: IVF-PQ candidates rescored with the exact vectors from SQLite (at least this many, or 10 * k)
RESCORE_DEPTH = 100
#: most vectors the IVF-PQ coarse quantizer and codebooks are trained on (a random sample)
TRAIN_SAMPLE = 100_000


#: vectors read from SQLite (or an array) per block while an index is built or calibrated
BLOCK = 4096  # ~13 MB in flight per block (the rows, their blobs joined, float32)


class ArrayVectors:
    """Vectors in memory, seen the way an index build reads them (see :class:`StoreVectors`)."""

    def __init__(self, ids: np.ndarray, vecs: np.ndarray):
        import numpy as np

        self.ids = np.asarray(ids, dtype=np.int64)
        self.vecs = vecs
        self.dim = int(vecs.shape[1]) if len(self.ids) else 0
        self._row_of: dict[int, int] | None = None

    def blocks(self, size: int = BLOCK) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        import numpy as np

        for start in range(0, len(self.ids), size):
            yield self.ids[start:start + size], np.asarray(self.vecs[start:start + size], dtype=np.float32)

    def rows(self, positions: np.ndarray) -> np.ndarray:
        """The vectors at ``positions`` (indexes into ``ids``), float32, in that order."""
        import numpy as np

        return np.asarray(self.vecs[positions], dtype=np.float32)

    def by_ids(self, ids: np.ndarray) -> np.ndarray:
        import numpy as np

        if self._row_of is None:
            self._row_of = {int(i): r for r, i in enumerate(self.ids)}
        return np.asarray(self.vecs[[self._row_of[int(i)] for i in ids]], dtype=np.float32)


class StoreVectors(ArrayVectors):
    """The store's vectors, read ``BLOCK`` rows at a time: building or calibrating an index over
    them holds the id list, the index itself and one block, never a second copy of every vector."""

    def __init__(self, store: IndexStore):
        import numpy as np

        self.store = store
        self.ids = np.fromiter((r[0] for r in store.con.execute("SELECT id FROM chunks ORDER BY id")), dtype=np.int64)
        first = store.con.execute("SELECT length(vector) FROM chunks ORDER BY id LIMIT 1").fetchone()
        self.width = int(first[0]) if first else 0
        self.dim = self.width // np.dtype(VECTOR_DTYPES[store.vector_dtype]).itemsize
        self._row_of = None

    def blocks(self, size: int = BLOCK) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        last = -1
        while True:
            rows = self.store.con.execute("SELECT id, vector FROM chunks WHERE id > ? ORDER BY id LIMIT ?",
                                          (last, size)).fetchall()
            if not rows:
                return
            ids, mat = self.store.decode_block(rows, self.width)
            yield ids, mat
            last = int(ids[-1])

    def rows(self, positions: np.ndarray) -> np.ndarray:
        return self.by_ids(self.ids[positions])

    def by_ids(self, ids: np.ndarray) -> np.ndarray:
        return self.store.vector_matrix(ids)


def resident_bytes(kind: str, n: int, dim: int) -> int:
    """Estimated query-side RAM of a FAISS index of ``kind`` over ``n`` vectors."""
    if kind == "hnsw":
        return n * (2 * dim + 2 * HNSW_M * 4 + 16)  # float16 vectors + level-0 links (+ upper levels, ids)
    if kind == "ivfpq":
        nlist = ivf_nlist(n)
        return n * (_pq_m(dim) + 8) + nlist * dim * 4 + 256 * dim * 4  # codes + ids, centroids, codebooks
    return n * (4 * dim + 8)  # flat and ivf: float vectors + ids


def choose_kind(kind: str, n: int, dim: int = 384, memory_budget_mb: float | None = None) -> str:
    """The FAISS kind for ``n`` vectors: ``kind`` itself unless 'auto'. Auto: flat below
    HNSW_THRESHOLD, HNSW up to HNSW_MAX while its float16 vectors and graph fit the memory budget,
    IVF-PQ (compressed codes, rescored from SQLite) above."""
    if kind != "auto":
        return kind
    if n <= HNSW_THRESHOLD:
        return "flat"
    budget = None if memory_budget_mb is None else memory_budget_mb * 1_000_000
    if n <= HNSW_MAX and (budget is None or resident_bytes("hnsw", n, dim) <= budget):
        return "hnsw"
    return "ivfpq"


def ivf_nlist(n: int) -> int:
    """Inverted lists for ``n`` vectors: ~4 sqrt(n), with >= 39 training points per list."""
    import math

    return max(1, min(int(4 * math.sqrt(n)), n // 39, 65536))


def _pq_m(dim: int) -> int:
    m = min(PQ_BYTES, dim)
    while dim % m:
        m -= 1
    return m


def build_faiss(ids: np.ndarray, vecs: np.ndarray, kind: str, dim: int,
                memory_budget_mb: float | None = None, seed: int = 0) -> Any:
    """A FAISS index of ``kind`` over vectors held in memory (see :func:`build_faiss_from`)."""
    return build_faiss_from(ArrayVectors(ids, vecs), kind, dim, memory_budget_mb, seed)


def training_sample(source: ArrayVectors, take: int, seed: int = 0) -> np.ndarray:
    """At most ``take`` of ``source``'s vectors drawn at random (all of them when fewer)."""
    import numpy as np

    n = len(source.ids)
    if take >= n:
        return np.ascontiguousarray(np.concatenate([m for _, m in source.blocks()]) if n else
                                    np.zeros((0, source.dim), dtype=np.float32), dtype=np.float32)
    rows = np.sort(np.random.default_rng(seed).choice(n, size=take, replace=False))
    return np.ascontiguousarray(source.rows(rows), dtype=np.float32)


def build_faiss_from(source: ArrayVectors, kind: str, dim: int, memory_budget_mb: float | None = None,
                     seed: int = 0) -> Any:
    """A FAISS index of ``kind`` (auto: by size and budget) over ``source``: the IVF kinds are
    trained on a sample, then every vector is added a block at a time."""
    import faiss
    import numpy as np

    n = len(source.ids)
    kind = choose_kind(kind, n, dim, memory_budget_mb)
    index: Any
    if kind == "hnsw":
        # the graph over float16 vectors: the store keeps them in float16, so the distances are
        # the same; at 100k 0.58x the RAM and file of a float32 graph, 0.64x the build time
        # (benchmarks/index_scale.py --kinds hnsw-float32,hnsw). An index saved with float32
        # vectors loads and updates as before.
        fp16: Any = faiss.ScalarQuantizer.QT_fp16  # the stubs call this argument a ScalarQuantizer
        base = faiss.IndexHNSWSQ(dim, fp16, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        base.hnsw.efConstruction = 100
        base.hnsw.efSearch = 128
        index = faiss.IndexIDMap(base)
    elif kind == "ivf" and n >= 64:
        nlist = max(1, min(int(4 * np.sqrt(n)), n // 39))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(training_sample(source, max(TRAIN_SAMPLE, 39 * nlist), seed))
        index.nprobe = min(nlist, 16)
    elif kind == "ivfpq" and n >= 256 * 39:
        index = train_ivfpq(training_sample(source, max(TRAIN_SAMPLE, 39 * ivf_nlist(n)), seed), dim, n, seed=seed)
    else:
        index = faiss.IndexIDMap(faiss.IndexFlatIP(dim))
    for ids, mat in source.blocks():
        index.add_with_ids(np.ascontiguousarray(mat, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64))
    return index


def train_ivfpq(sample: np.ndarray, dim: int, n: int, seed: int = 0) -> Any:
    """An empty IVF-PQ index for ``n`` vectors, trained on ``sample`` (:func:`training_sample`:
    k-means cost grows with the sample, not with ``n``)."""
    import faiss

    nlist = ivf_nlist(n)
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFPQ(quantizer, dim, nlist, _pq_m(dim), 8, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    index.train(sample)
    index.nprobe = min(nlist, 16)
    return index


def index_kind(index: Any) -> str:
    """The kind of a loaded FAISS index ('flat', 'hnsw', 'ivf', 'ivfpq')."""
    import faiss

    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexHNSW):
        return "hnsw"
    if isinstance(inner, faiss.IndexIVFPQ):
        return "ivfpq"
    if isinstance(inner, faiss.IndexIVF):
        return "ivf"
    return "flat"


def _inner(index: Any) -> Any:
    import faiss

    return faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else faiss.downcast_index(index)


def apply_search_params(index: Any, params: dict[str, Any]) -> None:
    """Set nprobe (IVF kinds) or efSearch (HNSW) from ``params`` (meta.json's ``search``)."""
    inner = _inner(index)
    kind = index_kind(index)
    if kind == "hnsw" and "ef_search" in params:
        inner.hnsw.efSearch = int(params["ef_search"])
    elif kind in ("ivf", "ivfpq") and "nprobe" in params:
        inner.nprobe = int(params["nprobe"])


def search_vectors(index: Any, queries: np.ndarray, k: int,
                   exact: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) of the top ``k`` per query; an IVF-PQ index's candidates (RESCORE_DEPTH or
    10 k of them) are rescored by ``exact(ids) -> float vectors`` when given."""
    import numpy as np

    q = np.ascontiguousarray(queries, dtype=np.float32)
    if exact is None or index_kind(index) != "ivfpq":
        return index.search(q, k)
    depth = min(max(RESCORE_DEPTH, 10 * k), max(index.ntotal, 1))
    _, cand = index.search(q, depth)
    out_s = np.full((len(q), k), -np.inf, dtype=np.float32)
    out_i = np.full((len(q), k), -1, dtype=np.int64)
    for r in range(len(q)):
        ids = cand[r][cand[r] >= 0]
        if not len(ids):
            continue
        scores = exact(ids) @ q[r]
        top = np.argsort(-scores)[:k]
        out_s[r, :len(top)], out_i[r, :len(top)] = scores[top], ids[top]
    return out_s, out_i


def calibrate(index: Any, vecs: np.ndarray, ids: np.ndarray, target: float, k: int = 10,
              n_queries: int = 200, seed: int = 1) -> dict[str, Any]:
    """:func:`calibrate_from` over vectors held in memory."""
    return calibrate_from(index, ArrayVectors(ids, vecs), target, k, n_queries, seed)


def calibrate_from(index: Any, source: ArrayVectors, target: float, k: int = 10,
                   n_queries: int = 200, seed: int = 1) -> dict[str, Any]:
    """The smallest nprobe / efSearch whose recall@k against exact (flat) search reaches
    ``target`` on held-out queries; sets it on ``index`` and returns what meta.json records.

    The queries are stored vectors moved off their point (gaussian noise of norm ~1, then normalized), so
    they sit among the chunks as real queries do without being one; exact search is a brute
    force over ``source``, a block at a time. An IVF-PQ index is measured as the Retriever
    searches it: candidates rescored with the exact vectors."""
    import numpy as np

    kind = index_kind(index)
    if kind not in ("hnsw", "ivf", "ivfpq") or index.ntotal <= k:
        return {}
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(source.ids), size=min(n_queries, len(source.ids)), replace=False)
    # noise of norm ~1: cosine ~0.7 to the chunk it came from, as far as real questions lie from
    # their answers with MiniLM (0.74-0.83 measured on the Kestrel facts); closer queries made
    # nprobe too small for real ones
    noise = rng.standard_normal((len(picks), source.dim)).astype(np.float32) / np.sqrt(source.dim)
    q = source.rows(picks) + noise
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    truth = top_k_over(source.blocks(), q, k)
    exact = source.by_ids if kind == "ivfpq" else None

    inner = _inner(index)
    if kind == "hnsw":
        name, values = "ef_search", [16, 32, 64, 128, 256, 512, 1024]
    else:
        name, values = "nprobe", [v for v in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024) if v < inner.nlist]
        values.append(inner.nlist)
    tried: dict[str, float] = {}
    chosen, recall = values[-1], 0.0
    for v in values:
        apply_search_params(index, {name: v})
        _, got = search_vectors(index, q, k, exact)
        recall = float(np.mean([len(set(g[g >= 0].tolist()) & set(t.tolist())) / k for g, t in zip(got, truth, strict=True)]))
        tried[str(v)] = round(recall, 4)
        if recall >= target:
            chosen = v
            break
    apply_search_params(index, {name: chosen})
    return {name: chosen, "recall_target": target, f"recall_at_{k}": round(recall, 4), "k": k,
            "held_out_queries": len(q), "tried": tried}


def exact_top_k(vecs: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Ids of the exact top ``k`` inner products, best first, in blocks (never a full score matrix)."""
    return top_k_over(ArrayVectors(ids, vecs).blocks(262_144), queries, k)


def top_k_over(blocks: Iterable[tuple[np.ndarray, np.ndarray]], queries: np.ndarray, k: int) -> np.ndarray:
    """Ids of the exact top ``k`` inner products over ``(ids, vectors)`` blocks, best first."""
    import numpy as np

    best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_i = np.full((len(queries), k), -1, dtype=np.int64)
    for block_ids, block in blocks:
        s = queries @ np.asarray(block, dtype=np.float32).T
        s_all = np.concatenate([best_s, s], axis=1)
        i_all = np.concatenate([best_i, np.broadcast_to(block_ids, s.shape)], axis=1)
        top = np.argpartition(-s_all, k - 1, axis=1)[:, :k]
        best_s = np.take_along_axis(s_all, top, axis=1)
        best_i = np.take_along_axis(i_all, top, axis=1)
    order = np.argsort(-best_s, axis=1, kind="stable")
    return np.take_along_axis(best_i, order, axis=1)


def save_faiss(index_dir: Path, index: Any, meta: dict[str, Any]) -> None:
    import faiss

    with atomic_path(index_dir / FAISS_NAME) as tmp:
        faiss.write_index(index, str(tmp))
    atomic_write(index_dir / META_NAME, json.dumps(meta, indent=2, sort_keys=True) + "\n")


def saved_meta(index_dir: Path) -> dict[str, Any] | None:
    """meta.json of the saved FAISS index (its generation, kind, search parameters), or None."""
    try:
        meta = json.loads((index_dir / META_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def load_faiss(index_dir: Path) -> tuple[Any, dict[str, Any]] | None:
    """The saved FAISS index and its meta.json, or None when either is missing or unreadable."""
    import faiss

    meta_path, faiss_path = index_dir / META_NAME, index_dir / FAISS_NAME
    if not (meta_path.is_file() and faiss_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        index = faiss.read_index(str(faiss_path))
    except (OSError, ValueError, RuntimeError) as err:
        log.warning("index files in %s unreadable (%s); rebuilding from SQLite", index_dir, err)
        return None
    return index, meta


def set_search_params(index: Any, meta: dict[str, Any] | None = None) -> None:
    """Search parameters for a loaded index: the calibrated ones meta.json records, else the
    defaults (HNSW efSearch >= 128)."""
    import faiss

    params = (meta or {}).get("search") or {}
    if params:
        apply_search_params(index, params)
        return
    inner = faiss.downcast_index(index.index) if hasattr(index, "index") else index
    if isinstance(inner, faiss.IndexHNSW):
        inner.hnsw.efSearch = max(inner.hnsw.efSearch, 128)
