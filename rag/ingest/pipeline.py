"""``ingest(ws)``: files and llms.txt sites -> chunks -> embeddings -> SQLite + FAISS.

Incremental by content hash: an unchanged file costs one sha256 and no embedding; a changed
file's chunks are replaced (vectors of chunks whose text did not change are reused); with
``prune`` the documents gone from disk leave the index. One bad file never stops the batch:
each gets a status (ok / skipped / error) and a reason in the report. The whole update is
one SQLite transaction under the writer lock, then the FAISS file is rebuilt atomically.

Longer than ~400 lines because the walk, the per-file decision and the one transaction share
the ingest state (_Ingestor); splitting them would pass that state through every call.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag.errors import IngestError
from rag.index.store import (
    BLOCK,
    FAISS_NAME,
    HNSW_THRESHOLD,
    ChunkRow,
    IndexStore,
    StoreVectors,
    build_faiss_from,
    calibrate_from,
    choose_kind,
    index_kind,
    load_faiss,
    save_faiss,
    saved_meta,
    writer_lock,
)
from rag.ingest.chunker import Chunker, ChunkSpec
from rag.ingest.context import CONTEXT_VERSION, add_context, embed_text
from rag.ingest.parsers import SkipFile, TextLimits, kind_for, parse_bytes
from rag.ingest.reading import read_regular
from rag.ingest.secret_scan import scan_chunks
from rag.progress import Progress, emit

if TYPE_CHECKING:
    import numpy as np

    from rag.config import Workspace

log = logging.getLogger(__name__)

CHUNKER_VERSION = "3"  # 3: word runs fill 90%, chunks span <= 32 chars per token, headings <= 300 chars


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
class _Candidate:
    source: str
    kind: str
    path: Path | None = None  # local file, or the crawl cache file
    mtime: float | None = None


def _is_url(s: str) -> bool:
    return s.startswith(("http://", "https://"))


def _source_name(ws: Workspace, p: Path) -> str:
    absolute = Path(os.path.abspath(p))
    try:
        return absolute.relative_to(ws.root).as_posix()
    except ValueError:
        return absolute.as_posix()


def _walk(root: Path, results: list[FileResult], ws: Workspace, seen: set[Path]) -> Iterator[Path]:
    """Files under ``root``; symlinks are followed only when they stay inside it and do not loop."""
    root_real = root.resolve()
    visited = {root_real}
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as err:
            results.append(FileResult(_source_name(ws, d), "error", f"cannot list folder: {err.strerror or err}"))
            continue
        subdirs: list[Path] = []
        for e in entries:
            if e.name.startswith("."):
                continue
            p = Path(e.path)
            if e.is_symlink():
                try:
                    real = p.resolve(strict=True)
                except FileNotFoundError:
                    results.append(FileResult(_source_name(ws, p), "skipped", "broken symlink"))
                    continue
                except (OSError, RuntimeError):
                    results.append(FileResult(_source_name(ws, p), "skipped", "symlink loop (not followed)"))
                    continue
                if not real.is_relative_to(root_real):
                    results.append(FileResult(_source_name(ws, p), "skipped", "symlink leaves the ingest root (not followed)"))
                    continue
                if real.is_dir():
                    if real in visited or any(real == a or a.is_relative_to(real) for a in [d.resolve()]):
                        results.append(FileResult(_source_name(ws, p), "skipped", "symlink loop (not followed)"))
                        continue
                    visited.add(real)
                    subdirs.append(p)
                    continue
            elif e.is_dir(follow_symlinks=False):
                visited.add(p.resolve())
                subdirs.append(p)
                continue
            real = p.resolve()
            if real in seen:
                continue
            seen.add(real)
            yield p
        stack.extend(reversed(subdirs))


class _Ingestor:
    def __init__(self, ws: Workspace, progress: Progress | None):
        self.ws = ws
        self.cfg = ws.config
        self.progress = progress
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
            _give_back_heap()

    @property
    def chunker(self) -> Chunker:
        if self._chunker is None:
            budget = min(self.cfg.corpus.chunk_tokens, self.embedder.max_tokens - 2)
            self._chunker = Chunker(self.embedder.count_tokens, budget, self.cfg.corpus.chunk_overlap,
                                    reserve_heading=True)
        return self._chunker

    def candidates(self, paths: Sequence[str], results: list[FileResult]) -> list[_Candidate]:
        out: list[_Candidate] = []
        seen: set[Path] = set()
        sources: set[str] = set()  # a file named twice (folder + file, or two URLs) is read once
        for entry in paths:
            if _is_url(entry):
                from rag.ingest.crawl import crawl

                pages, failures = crawl(self.ws, entry, progress=self.progress)
                results.extend(FileResult(url, "error", reason) for url, reason in failures)
                for page in pages:
                    if page.url not in sources:
                        sources.add(page.url)
                        kind = kind_for(page.url, page.content_type) or "text"
                        out.append(_Candidate(page.url, kind, page.path, None))
                continue
            p = self.ws.path(entry)
            if not os.path.lexists(p):
                results.append(FileResult(entry, "error", f"path not found: {p} (fix corpus.paths or the argument)"))
                continue
            files = _walk(p, results, self.ws, seen) if p.is_dir() else iter([p])
            for f in files:
                fkind = kind_for(f)
                src = _source_name(self.ws, f)
                if src in sources:
                    continue
                sources.add(src)
                if fkind is None:
                    results.append(FileResult(src, "skipped", f"unsupported file type '{f.suffix or f.name}'"))
                    continue
                out.append(_Candidate(src, fkind, f))
        return out

    def embed_sha(self, spec: ChunkSpec) -> str:
        from rag.index.embedder import vector_family

        # float vectors (torch, onnx) keep the key they always had; int8 ones never stand in for them
        family = vector_family(self.cfg.embedding.backend)
        model = self.cfg.embedding.model if family == "float" else f"{self.cfg.embedding.model}\x00{family}"
        return hashlib.sha256(f"{model}\x00{embed_text(spec)}".encode()).hexdigest()


def _give_back_heap() -> None:
    """Return freed heap pages to the OS (glibc keeps them otherwise), so the FAISS build that
    follows the embedding does not stack its memory on the model's."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(name).malloc_trim(0)


__all__ = ["FileResult", "IngestReport", "embed_text", "ingest"]


def ingest(ws: Workspace, paths: Sequence[str] | None = None, prune: bool = False,
           progress: Progress | None = None, rebuild: bool = False, ray_address: str | None = None,
           ray_workers: int | None = None) -> IngestReport:
    """Ingest ``paths`` (default: corpus.paths). ``rebuild`` re-reads and re-embeds every
    document from scratch (also done by itself when the model, the chunking or the index format
    changed); documents not among ``paths`` then leave the index, with a warning each.

    Files are read, chunked and embedded in batches of about ``corpus.commit_every`` chunks,
    each committed in its own transaction: memory is bounded by one batch, and an ingest that
    is stopped keeps what it committed. The next ingest goes on from there (a committed
    document is unchanged, so nothing in it is embedded again) and brings index.faiss up to
    date at the end. With ``ray_address`` the files are read, chunked and embedded on a Ray
    cluster (rag.ingest.distributed; 'local' starts one on this machine with ``ray_workers``
    workers) and written here the same way."""
    t0 = time.perf_counter()
    report = IngestReport(index_dir=str(ws.index_dir))
    paths = list(paths) if paths else list(ws.config.corpus.paths)
    ing = _Ingestor(ws, progress)
    max_bytes = int(ws.config.corpus.max_file_mb * 1_000_000)
    limits = TextLimits.for_corpus(ws.config.corpus)
    chunking_sig = (f"{CHUNKER_VERSION}/ctx{CONTEXT_VERSION}/{ws.config.corpus.chunk_tokens}"
                    f"/{ws.config.corpus.chunk_overlap}")
    chunking_sig += "/redact" if ws.config.corpus.redact else ""  # switching it re-chunks every stored text

    from rag.index.embedder import vector_family

    with writer_lock(ws.index_dir):
        store = IndexStore(ws.index_dir)
        try:
            family = vector_family(ws.config.embedding.backend)
            model_changed = (store.get_meta("embedding_model") not in (None, ws.config.embedding.model)
                             or (store.get_meta("embedding_vectors") or "float") != family)
            chunking_changed = store.get_meta("chunking") not in (None, chunking_sig)
            # the old rows go and the schema is made anew: other vectors cannot share the new index
            reset = store.outdated or model_changed or (rebuild and not store.newest_format)
            if store.outdated:
                log.warning("the index has an older format: rebuilding it from the documents")
            elif (model_changed or chunking_changed) and not rebuild:
                log.warning("embedding model or chunking changed: re-embedding every document")
            # every document is read again; without a reset, stored chunks of the same text keep their vectors
            rebuild = rebuild or reset or chunking_changed
            run = _Run(ws, store, ing, report, reset=reset, rebuild=rebuild, family=family,
                       chunking_sig=chunking_sig)
            results: list[FileResult] = []
            cands = ing.candidates(paths, results)
            run.begin(cands)
            if ray_address:
                from rag.ingest.distributed import read_on_ray

                read_on_ray(run, cands, results, address=ray_address, workers=ray_workers,
                            commit=lambda: run.commit(cands, prune=prune, results=results, final=False))
            elif ws.config.corpus.parse_workers > 0 and len(cands) > 1:
                for c, res, item, size in _read_ahead(run, cands, ws.config.corpus.parse_workers):
                    results.append(res)
                    run.bytes_read += size
                    run.add(c, res, item)
                    if run.pending_chunks >= ws.config.corpus.commit_every:
                        run.commit(cands, prune=prune, results=results, final=False)
            else:
                for c in cands:
                    res = FileResult(c.source, "ok")
                    results.append(res)
                    run.read(c, res, max_bytes, limits)
                    if run.pending_chunks >= ws.config.corpus.commit_every:
                        run.commit(cands, prune=prune, results=results, final=False)
            run.commit(cands, prune=prune, results=results, final=True)
            if run.n_total > HNSW_THRESHOLD:  # a big FAISS build: the model's memory goes first
                ing.release()
            # FAISS, derived from SQLite, replaced atomically
            _update_faiss(ws, store, kind=run.kind, dim=run.dim or 384, generation=run.generation,
                          old_generation=run.old_generation, new_ids=run.new_ids, removed_ids=store.deleted_ids,
                          full=run.rebuild or run.reset, n_total=run.n_total)
            report.files = results
            report.total_chunks = run.n_total
            report.total_documents = len(store.sources())
        finally:
            store.close()
    report.seconds = round(time.perf_counter() - t0, 3)
    _audit_ingest(ws, report)
    return report


@dataclass
class _Item:
    cand: _Candidate
    res: FileResult
    sha: str
    mtime: float | None
    size: int
    specs: list[ChunkSpec]
    vectors: dict[str, np.ndarray] | None = None  # embed_sha -> vector, when a worker embedded them


def read_file(ing: _Ingestor, c: _Candidate, res: FileResult, old: dict[str, Any] | None, *, rebuild: bool,
              max_bytes: int, limits: TextLimits) -> tuple[_Item | None, int]:
    """Read, hash, parse and chunk one file: (the item to store, or None when the file is
    unchanged since ``old`` or failed; bytes read). A failure is recorded in ``res``, never raised."""
    ws = ing.ws
    size = 0
    try:
        assert c.path is not None
        data, st = read_regular(c.path, max_bytes)  # regular files only, never past max_bytes
        size = st.st_size
        mtime = c.mtime if c.mtime is not None else st.st_mtime
        sha = hashlib.sha256(data).hexdigest()
        if old and old["sha256"] == sha and not rebuild and old["status"] != "error":
            res.status, res.reason = old["status"], old["reason"]
            res.action, res.chunks = "unchanged", int(old["n_chunks"])
            return None, size
        doc = parse_bytes(data, c.kind, c.path.name, limits)
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
        return _Item(c, res, sha, mtime, st.st_size, specs), size
    except SkipFile as why:
        res.status, res.reason = "skipped", str(why)
    except IngestError as err:
        res.status, res.reason = "error", str(err)
    except Exception as err:  # noqa: BLE001 - one bad file never stops the batch
        log.debug("failed on %s", c.source, exc_info=True)
        res.status, res.reason = "error", f"{type(err).__name__}: {err}"
    return None, size


_WORKER: dict[str, Any] = {}


def _worker_start(config_path: str, rebuild: bool) -> None:
    """In a parse worker: the workspace, and an _Ingestor whose "embedder" is the tokenizer alone."""
    from rag.config import load_workspace
    from rag.index.embedder import TokenCounter, resolve_model_dir

    ws = load_workspace(Path(config_path))
    ing = _Ingestor(ws, None)
    model_dir = resolve_model_dir(ws.config.embedding, ws.root)
    if TokenCounter.usable(model_dir):
        ing._embedder = TokenCounter(model_dir)
    _WORKER.update(ing=ing, rebuild=rebuild, max_bytes=int(ws.config.corpus.max_file_mb * 1_000_000),
                   limits=TextLimits.for_corpus(ws.config.corpus))


def _worker_read(c: _Candidate, old: dict[str, Any] | None) -> tuple[FileResult, _Item | None, int]:
    res = FileResult(c.source, "ok")
    item, size = read_file(_WORKER["ing"], c, res, old, rebuild=_WORKER["rebuild"],
                           max_bytes=_WORKER["max_bytes"], limits=_WORKER["limits"])
    return res, item, size


def _read_ahead(run: _Run, cands: list[_Candidate], workers: int) -> Iterator[tuple[_Candidate, FileResult, _Item | None, int]]:
    """The files read, parsed and chunked by ``workers`` processes, in order, at most a few
    files ahead of the caller (which embeds and commits meanwhile)."""
    import collections
    import multiprocessing
    from concurrent.futures import Future, ProcessPoolExecutor

    ahead = max(4, 4 * workers)
    # spawn: a fork of a process that holds torch's threads can deadlock
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_worker_start, initargs=(str(run.ws.config_path), run.rebuild)) as pool:
        queue: collections.deque[tuple[_Candidate, Future[tuple[FileResult, _Item | None, int]]]] = collections.deque()
        todo = iter(cands)
        for c in todo:
            queue.append((c, pool.submit(_worker_read, c, run.store.document(c.source))))
            if len(queue) >= ahead:
                break
        while queue:
            c, fut = queue.popleft()
            nxt = next(todo, None)
            if nxt is not None:
                queue.append((nxt, pool.submit(_worker_read, nxt, run.store.document(nxt.source))))
            res, item, size = fut.result()
            if item is not None:
                item.cand, item.res = c, res
            yield c, res, item, size


class _Run:
    """One ingest's state between its batches (see :func:`ingest`)."""

    def __init__(self, ws: Workspace, store: IndexStore, ing: _Ingestor, report: IngestReport, *,
                 reset: bool, rebuild: bool, family: str, chunking_sig: str):
        import array

        self.ws, self.store, self.ing, self.report = ws, store, ing, report
        self.reset = reset  # the first commit empties the store: another model, a new format (or --rebuild to it)
        self.rebuild = rebuild  # every document is read again (--rebuild, chunking changed): stored ones are stale
        self.family, self.chunking_sig = family, chunking_sig
        self.pending: list[_Item] = []
        self.failed: list[tuple[_Candidate, FileResult]] = []
        self.pending_chunks = 0
        self.commits = 0
        self.bumped = False
        self.any_items = False
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

    def begin(self, cands: list[_Candidate]) -> None:
        interrupted = self.store.get_meta("ingest_started_at")
        if interrupted and not self.reset:
            self.report.resumed = True
            log.warning("an earlier ingest (started %s) stopped before it finished: going on from its last "
                        "committed batch (committed documents are not embedded again)", interrupted)
        if self.ing.progress is not None:
            for c in cands:
                with contextlib.suppress(OSError, TypeError):
                    self.bytes_total += os.stat(c.path).st_size  # type: ignore[arg-type]

    def read(self, c: _Candidate, res: FileResult, max_bytes: int, limits: TextLimits) -> None:
        """Read, hash, parse and chunk one file into the pending batch (nothing when unchanged)."""
        item, size = read_file(self.ing, c, res, self.store.document(c.source), rebuild=self.rebuild,
                               max_bytes=max_bytes, limits=limits)
        self.bytes_read += size
        self.add(c, res, item)

    def add(self, c: _Candidate, res: FileResult, item: _Item | None) -> None:
        """A file read here or by a worker: into the pending batch, or among the failed ones."""
        if item is not None:
            self.pending.append(item)
            self.pending_chunks += len(item.specs)
        elif res.status != "ok":
            self.failed.append((c, res))

    def commit(self, cands: list[_Candidate], *, prune: bool, results: list[FileResult], final: bool) -> None:
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
            self.any_items = self.any_items or bool(self.pending)
            if final:
                self._last(cands, prune, results)
            if not self.bumped and (self.pending or report.chunks_removed > removed_before or
                                    (self.commits == 0 and self.rebuild)):
                self.generation = self.old_generation + 1
                self.bumped = True
                store.set_meta("generation", str(self.generation))
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

    def _first(self, cands: list[_Candidate]) -> None:
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

    @property
    def _kind_changed(self) -> bool:
        return self.store.get_meta("faiss_kind") != self.kind

    def _last(self, cands: list[_Candidate], prune: bool, results: list[FileResult]) -> None:
        store, report = self.store, self.report
        # documents still chunked the old way were not among this run's paths
        for (src,) in store.con.execute("SELECT source FROM documents WHERE sha256 IS NULL AND n_chunks > 0").fetchall():
            log.warning("dropping %s from the index (re-ingest it with the new settings)", src)
            report.chunks_removed += store.delete_document(src)
        if prune:
            seen_sources = {c.source for c in cands}
            for src in store.sources():
                if src in seen_sources or _is_url(src):
                    continue
                if not self.ws.path(src).exists():
                    report.chunks_removed += store.delete_document(src)
                    results.append(FileResult(src, "ok", "file no longer exists", "removed"))
        self.n_total = store.count_chunks()
        if self.any_items:
            self.dim = self.vec_dim or int(self.ing.embedder.dim)
        self.kind = choose_kind(self.ws.config.index.kind, self.n_total, self.dim or 384,
                                self.ws.config.index.memory_budget_mb)
        if self._kind_changed:
            store.set_meta("faiss_kind", self.kind)
            if not self.bumped:
                self.generation = self.old_generation + 1
                self.bumped = True
                store.set_meta("generation", str(self.generation))
        if self.dim:
            store.set_meta("dim", str(self.dim))

    def _embed(self, items: list[_Item]) -> dict[str, np.ndarray]:
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


TOMBSTONE_LIMIT = 0.2


#: an IVF index is updated in place while the chunks stay within this factor of what it was trained on
IVF_RETRAIN_FACTOR = 2.0


def _update_faiss(ws: Workspace, store: IndexStore, *, kind: str, dim: int, generation: int, old_generation: int,
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
        part = [int(i) for i in new_ids[start:start + BLOCK]]
        stored = store.vectors_for_ids(part)
        mat = np.stack([stored[i] for i in part]).astype(np.float32)
        index.add_with_ids(mat, np.asarray(part, dtype=np.int64))


def _audit_ingest(ws: Workspace, report: IngestReport) -> None:
    """Append an "ingest" record: which sources were read, with what outcome.

    The index is already committed when this runs; if the log cannot be written the
    AuditError says so, and the next ingest (a no-op for unchanged files) logs again.
    """
    from rag.audit import audit_event

    counts = report.counts()
    audit_event(
        ws,
        "ingest",
        sources=[f.source for f in report.files],
        statuses={f.source: f.status for f in report.files if f.status != "ok"},
        counts=counts,
        chunks_added=report.chunks_added,
        chunks_removed=report.chunks_removed,
        total_chunks=report.total_chunks,
        outcome="ok" if counts.get("error", 0) == 0 else "partial",
    )
