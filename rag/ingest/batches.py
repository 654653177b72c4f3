"""The ingest's per-file and per-batch machinery: what one file becomes (:func:`chunk_file`),
and the batches of about ``corpus.commit_every`` chunks that are embedded and committed, one
SQLite transaction each (:class:`Batches`). ``rag.ingest.pipeline`` walks the corpus and drives
them; ``rag.ingest.workers`` and ``rag.ingest.distributed`` chunk files elsewhere and hand the
results in through :meth:`Batches.add`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag.errors import IngestError
from rag.index.store import ChunkRow, IndexStore, choose_kind
from rag.ingest.chunker import Chunker, ChunkSpec
from rag.ingest.context import add_context, embed_text
from rag.ingest.parsers import SkipFile, TextLimits, parse_bytes
from rag.ingest.reading import read_regular
from rag.ingest.secret_scan import scan_chunks
from rag.progress import Progress, emit

if TYPE_CHECKING:
    import numpy as np

    from rag.config import Workspace

log = logging.getLogger(__name__)


@dataclass
class FileResult:
    source: str
    status: str  # ok | skipped | error
    reason: str | None = None
    action: str | None = None  # added | updated | unchanged | removed
    chunks: int = 0
    embedded: int = 0


@dataclass
class IngestReport:
    files: list[FileResult] = field(default_factory=list)
    chunks_added: int = 0
    chunks_removed: int = 0
    embeddings_computed: int = 0
    total_chunks: int = 0
    total_documents: int = 0
    resumed: bool = False  # went on from an earlier ingest that was stopped
    seconds: float = 0.0
    index_dir: str = ""

    def counts(self) -> dict[str, int]:
        out = {"ok": 0, "skipped": 0, "error": 0}
        for f in self.files:
            out[f.status] = out.get(f.status, 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["counts"] = self.counts()
        return d


@dataclass
class Candidate:
    source: str
    kind: str
    path: Path | None = None  # local file, or the crawl cache file
    mtime: float | None = None


def is_url(s: str) -> bool:
    return s.startswith(("http://", "https://"))


class Ingestor:
    """The workspace's settings with the embedder and chunker, loaded on first use."""

    def __init__(self, ws: Workspace, progress: Progress | None):
        self.ws = ws
        self.cfg = ws.config
        self.progress = progress
        #: what one file may be and yield (corpus.max_file_mb and the text limits)
        self.max_bytes = int(ws.config.corpus.max_file_mb * 1_000_000)
        self.limits = TextLimits.for_corpus(ws.config.corpus)
        self._embedder: Any = None
        self._chunker: Chunker | None = None

    @property
    def embedder(self) -> Any:
        if self._embedder is None:
            from rag.index.embedder import load_embedder

            self._embedder = load_embedder(self.cfg.embedding, self.ws.root)
        return self._embedder

    def release(self) -> None:
        """Let the embedding model's memory go (the FAISS build that follows does not need it; the
        next user in this process loads it again)."""
        if self._embedder is not None:
            import gc

            self._embedder = None
            self._chunker = None
            gc.collect()
            from rag.index.embedder import forget_embedders

            forget_embedders()
            give_back_heap()

    @property
    def chunker(self) -> Chunker:
        if self._chunker is None:
            budget = min(self.cfg.corpus.chunk_tokens, self.embedder.max_tokens - 2)
            self._chunker = Chunker(self.embedder.count_tokens, budget, self.cfg.corpus.chunk_overlap,
                                    reserve_heading=True)
        return self._chunker

    def embed_sha(self, spec: ChunkSpec) -> str:
        from rag.index.embedder import vector_family

        # float vectors (torch, onnx) keep the key they always had; int8 ones never stand in for them
        family = vector_family(self.cfg.embedding.backend)
        model = self.cfg.embedding.model if family == "float" else f"{self.cfg.embedding.model}\x00{family}"
        return hashlib.sha256(f"{model}\x00{embed_text(spec)}".encode()).hexdigest()


def give_back_heap() -> None:
    """Return freed heap pages to the OS (glibc keeps them otherwise), so the FAISS build that
    follows the embedding does not stack its memory on the model's."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(name).malloc_trim(0)


@dataclass
class Item:
    cand: Candidate
    res: FileResult
    sha: str
    mtime: float | None
    size: int
    specs: list[ChunkSpec]
    vectors: dict[str, np.ndarray] | None = None  # embed_sha -> vector, when a worker embedded them


def chunk_file(ing: Ingestor, c: Candidate, res: FileResult, old: dict[str, Any] | None, *,
               rebuild: bool) -> tuple[Item | None, int]:
    """Read, hash, parse and chunk one file: (the item to store, or None when the file is
    unchanged since ``old`` or failed; bytes read). A failure is recorded in ``res``, never raised."""
    ws = ing.ws
    size = 0
    try:
        assert c.path is not None
        data, st = read_regular(c.path, ing.max_bytes)  # regular files only, never past max_bytes
        size = st.st_size
        mtime = c.mtime if c.mtime is not None else st.st_mtime
        sha = hashlib.sha256(data).hexdigest()
        if old and old["sha256"] == sha and not rebuild and old["status"] != "error":
            res.status, res.reason = old["status"], old["reason"]
            res.action, res.chunks = "unchanged", int(old["n_chunks"])
            return None, size
        doc = parse_bytes(data, c.kind, c.path.name, ing.limits)
        del data
        specs = ing.chunker.chunk(doc, c.source)
        specs = scan_chunks(ws, c.source, specs)  # secrets: warn, or mask (corpus.redact)
        if not specs:
            raise SkipFile("no text to index")
        specs = add_context(specs, doc.title, ing.embedder.count_tokens, ing.embedder.max_tokens - 2)
        if doc.warnings:  # indexed, but the user is told (e.g. bad UTF-8 bytes replaced)
            res.reason = "; ".join(doc.warnings)
            log.warning("%s: %s", c.source, res.reason)
        res.action = "updated" if old and old["n_chunks"] else "added"
        return Item(c, res, sha, mtime, st.st_size, specs), size
    except SkipFile as why:
        res.status, res.reason = "skipped", str(why)
    except IngestError as err:
        res.status, res.reason = "error", str(err)
    except Exception as err:  # noqa: BLE001 - one bad file never stops the batch
        log.debug("failed on %s", c.source, exc_info=True)
        res.status, res.reason = "error", f"{type(err).__name__}: {err}"
    return None, size


class Batches:
    """One ingest's state between its batches (see :func:`ingest`)."""

    def __init__(self, ws: Workspace, store: IndexStore, ing: Ingestor, report: IngestReport, *,
                 reset: bool, rebuild: bool, family: str, chunking_sig: str):
        import array

        self.ws, self.store, self.ing, self.report = ws, store, ing, report
        self.reset = reset  # the first commit empties the store: another model, a new format (or --rebuild to it)
        self.rebuild = rebuild  # every document is read again (--rebuild, chunking changed): stored ones are stale
        self.family, self.chunking_sig = family, chunking_sig
        self.pending: list[Item] = []
        self.failed: list[tuple[Candidate, FileResult]] = []
        self.pending_chunks = 0
        self.commits = 0
        self.new_ids = array.array("q")  # ids added by this run (HNSW and IVF add them to the saved index)
        store.deleted_ids = array.array("q")  # ids removed by this run (IVF removes them from it)
        self.old_generation = int(store.get_meta("generation") or 0)
        self.generation = self.old_generation
        self.kind = store.get_meta("faiss_kind") or "flat"
        self.dim = int(store.get_meta("dim") or 0)
        self.n_total = 0
        self.vec_dim = 0  # of the vectors this run wrote
        # progress: chunks embedded of an estimate (chunks so far, scaled by the bytes still unread)
        self.bytes_total = 0
        self.bytes_read = 0
        self.to_embed = 0
        self.embedded = 0

    def begin(self, cands: list[Candidate]) -> None:
        interrupted = self.store.get_meta("ingest_started_at")
        if interrupted and not self.reset:
            self.report.resumed = True
            log.warning("an earlier ingest (started %s) stopped before it finished: going on from its last "
                        "committed batch (committed documents are not embedded again)", interrupted)
        if self.ing.progress is not None:
            for c in cands:
                with contextlib.suppress(OSError, TypeError):
                    self.bytes_total += os.stat(c.path).st_size  # type: ignore[arg-type]

    def read(self, c: Candidate, res: FileResult) -> None:
        """Read, hash, parse and chunk one file into the pending batch (nothing when unchanged)."""
        item, size = chunk_file(self.ing, c, res, self.store.document(c.source), rebuild=self.rebuild)
        self.bytes_read += size
        self.add(c, res, item)

    def add(self, c: Candidate, res: FileResult, item: Item | None) -> None:
        """A file read here or by a worker: into the pending batch, or among the failed ones."""
        if item is not None:
            self.pending.append(item)
            self.pending_chunks += len(item.specs)
        elif res.status != "ok":
            self.failed.append((c, res))

    def commit(self, cands: list[Candidate], *, prune: bool, results: list[FileResult], final: bool) -> None:
        """Embed the pending batch and write it in one transaction; the final one also drops
        what left the corpus, picks the FAISS kind and marks the ingest finished."""
        store, report = self.store, self.report
        vectors = self._embed(self.pending)
        store.con.execute("BEGIN IMMEDIATE")
        try:
            removed_before = report.chunks_removed
            if self.commits == 0:
                self._first(cands)
            for item in self.pending:
                c, res, specs = item.cand, item.res, item.specs
                report.chunks_removed += store.delete_chunks(c.source)
                rows = [(ChunkRow(s.chunk_id, c.source, s.heading, s.start_line, s.end_line, s.page,
                                  s.byte_start, s.byte_end, s.text, s.n_tokens, self.ing.embed_sha(s),
                                  s.context),
                         vectors[self.ing.embed_sha(s)]) for s in specs]
                added_ids = store.insert_chunks(rows)
                self.new_ids.extend(added_ids)
                report.chunks_added += len(added_ids)
                res.chunks = len(specs)
                store.put_document(c.source, sha256=item.sha, mtime=item.mtime, size=item.size, kind=c.kind,
                                   status="ok", reason=res.reason, n_chunks=len(specs))
            for c, res in self.failed:  # stale chunks of a file that no longer reads leave the index
                report.chunks_removed += store.delete_chunks(c.source)
                store.put_document(c.source, sha256=None, mtime=None, size=None, kind=c.kind,
                                   status=res.status, reason=res.reason, n_chunks=0)
            if final:
                self._last(cands, prune, results)
            if self.pending or report.chunks_removed > removed_before or (self.commits == 0 and self.rebuild):
                self._bump()
            if final:
                store.con.execute("DELETE FROM meta WHERE key='ingest_started_at'")
            elif self.pending or self.failed:
                store.set_meta("ingest_started_at", store.get_meta("ingest_started_at") or
                               time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            store.con.execute("COMMIT")
        except BaseException:
            store.con.execute("ROLLBACK")
            raise
        self.commits += 1
        self.pending, self.failed, self.pending_chunks = [], [], 0

    def _first(self, cands: list[Candidate]) -> None:
        """Inside the first commit: empty or mark the old index, record the settings it is built with."""
        store = self.store
        if self.reset:
            kept = {c.source for c in cands}
            for src in store.sources():
                if src not in kept:
                    log.warning("dropping %s from the index (re-ingest it with the new settings)", src)
            self.report.chunks_removed += store.count_chunks()
            store.reset()
        elif self.rebuild:
            # chunked the old way: read again in this run (or the next, if this one is stopped);
            # vectors of chunk texts that did not change are reused
            store.con.execute("UPDATE documents SET sha256=NULL")
        store.set_meta("embedding_model", self.ws.config.embedding.model)
        store.set_meta("embedding_vectors", self.family)
        store.set_meta("chunking", self.chunking_sig)

    def _bump(self) -> None:
        """This run changes the index: its generation is one past the one it found (once)."""
        if self.generation == self.old_generation:
            self.generation = self.old_generation + 1
            self.store.set_meta("generation", str(self.generation))

    @property
    def _kind_changed(self) -> bool:
        return self.store.get_meta("faiss_kind") != self.kind

    def _last(self, cands: list[Candidate], prune: bool, results: list[FileResult]) -> None:
        store, report = self.store, self.report
        # documents still chunked the old way were not among this run's paths
        for (src,) in store.con.execute("SELECT source FROM documents WHERE sha256 IS NULL AND n_chunks > 0").fetchall():
            log.warning("dropping %s from the index (re-ingest it with the new settings)", src)
            report.chunks_removed += store.delete_document(src)
        if prune:
            seen_sources = {c.source for c in cands}
            for src in store.sources():
                if src in seen_sources or is_url(src):
                    continue
                if not self.ws.path(src).exists():
                    report.chunks_removed += store.delete_document(src)
                    results.append(FileResult(src, "ok", "file no longer exists", "removed"))
        self.n_total = store.count_chunks()
        if self.vec_dim:  # set by every batch that wrote chunks
            self.dim = self.vec_dim
        self.kind = choose_kind(self.ws.config.index.kind, self.n_total, self.dim or 384,
                                self.ws.config.index.memory_budget_mb)
        if self._kind_changed:
            store.set_meta("faiss_kind", self.kind)
            self._bump()
        if self.dim:
            store.set_meta("dim", str(self.dim))

    def _embed(self, items: list[Item]) -> dict[str, np.ndarray]:
        """Vectors of the batch's chunks: reused where a stored chunk of the same document had the
        same text, embedded otherwise."""
        ing, report = self.ing, self.report
        vectors: dict[str, np.ndarray] = {}
        needed: dict[str, str] = {}  # embed_sha -> text
        for item in items:
            reusable = self.store.vectors_by_embed_sha(item.cand.source)
            if item.vectors:
                reusable.update(item.vectors)
            n_new = 0
            for s in item.specs:
                key = ing.embed_sha(s)
                if key in vectors or key in needed:
                    continue
                if key in reusable:
                    vectors[key] = reusable[key]
                else:
                    needed[key] = embed_text(s)
                    n_new += 1
            item.res.embedded = n_new if item.vectors is None else item.res.embedded + n_new
        if vectors:
            self.vec_dim = len(next(iter(vectors.values())))
        if not needed:
            return vectors
        self.to_embed += len(needed)
        keys = list(needed)
        batch = max(1, ing.cfg.embedding.batch_size) * 4
        for start in range(0, len(keys), batch):
            part = keys[start:start + batch]
            mat = ing.embedder.encode([needed[k] for k in part])
            for k, v in zip(part, mat, strict=True):
                vectors[k] = v
            report.embeddings_computed += len(part)
            self.embedded += len(part)
            emit(ing.progress, self.embedded, self._estimated_total(), "embedding chunks")
        self.vec_dim = len(next(iter(vectors.values())))
        return vectors

    def _estimated_total(self) -> int:
        """Chunks to embed: those found so far, plus as many per byte in the files not read yet."""
        unread = max(0, self.bytes_total - self.bytes_read)
        per_byte = self.to_embed / self.bytes_read if self.bytes_read else 0.0
        return max(self.embedded, self.to_embed + int(unread * per_byte))
