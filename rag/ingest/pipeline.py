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

import hashlib
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag.errors import IngestError
from rag.index.store import (
    ChunkRow,
    IndexStore,
    build_faiss,
    calibrate,
    choose_kind,
    load_faiss,
    save_faiss,
    writer_lock,
)
from rag.ingest.chunker import Chunker, ChunkSpec
from rag.ingest.context import CONTEXT_VERSION, add_context, embed_text
from rag.ingest.parsers import SkipFile, TextLimits, kind_for, parse_bytes
from rag.ingest.reading import read_regular
from rag.ingest.secret_scan import scan_chunks
from rag.progress import Progress, counter

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


__all__ = ["FileResult", "IngestReport", "embed_text", "ingest"]


def ingest(ws: Workspace, paths: Sequence[str] | None = None, prune: bool = False,
           progress: Progress | None = None, rebuild: bool = False) -> IngestReport:
    """Ingest ``paths`` (default: corpus.paths). ``rebuild`` re-reads and re-embeds every
    document from scratch (also done by itself when the model, the chunking or the index format
    changed); documents not among ``paths`` then leave the index, with a warning each."""
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
            reset = rebuild or store.outdated  # the old rows go, and the schema is made anew
            family = vector_family(ws.config.embedding.backend)
            rebuild = (reset or store.get_meta("embedding_model") not in (None, ws.config.embedding.model)
                       or (store.get_meta("embedding_vectors") or "float") != family
                       or store.get_meta("chunking") not in (None, chunking_sig))
            if store.outdated:
                log.warning("the index has an older format: rebuilding it from the documents")
            elif rebuild and not reset:
                log.warning("embedding model or chunking changed: re-embedding every document")
            results: list[FileResult] = []
            cands = ing.candidates(paths, results)
            # 1. read, hash, parse, chunk (cheap; no model unless something changed)
            todo: list[tuple[_Candidate, FileResult, str, float | None, int, list[ChunkSpec]]] = []
            failed: list[tuple[_Candidate, FileResult]] = []
            for c in cands:
                res = FileResult(c.source, "ok")
                results.append(res)
                try:
                    assert c.path is not None
                    data, st = read_regular(c.path, max_bytes)  # regular files only, never past max_bytes
                    mtime = c.mtime if c.mtime is not None else st.st_mtime
                    sha = hashlib.sha256(data).hexdigest()
                    old = store.document(c.source)
                    if old and old["sha256"] == sha and not rebuild and old["status"] != "error":
                        res.status, res.reason = old["status"], old["reason"]
                        res.action, res.chunks = "unchanged", int(old["n_chunks"])
                        continue
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
                    todo.append((c, res, sha, mtime, st.st_size, specs))
                except SkipFile as why:
                    res.status, res.reason = "skipped", str(why)
                    failed.append((c, res))
                except IngestError as err:
                    res.status, res.reason = "error", str(err)
                    failed.append((c, res))
                except Exception as err:  # noqa: BLE001 - one bad file never stops the batch
                    log.debug("failed on %s", c.source, exc_info=True)
                    res.status, res.reason = "error", f"{type(err).__name__}: {err}"
                    failed.append((c, res))
            # 2. embed what is new (vectors of unchanged chunk texts are reused)
            vectors = _embed_all(ing, store, todo, report)
            # 3. write: one transaction for the whole batch
            new_ids: list[int] = []
            old_generation = int(store.get_meta("generation") or 0)
            store.con.execute("BEGIN IMMEDIATE")
            try:
                if reset:
                    kept = {c.source for c, *_ in todo} | {c.source for c, _ in failed}
                    for src in store.sources():
                        if src not in kept:
                            log.warning("dropping %s from the index (re-ingest it with the new settings)", src)
                    report.chunks_removed += store.count_chunks()
                    store.reset()
                for c, res, sha, file_mtime, size, specs in todo:
                    report.chunks_removed += store.delete_chunks(c.source)
                    rows = [(ChunkRow(s.chunk_id, c.source, s.heading, s.start_line, s.end_line, s.page,
                                      s.byte_start, s.byte_end, s.text, s.n_tokens, ing.embed_sha(s),
                                      s.context),
                             vectors[ing.embed_sha(s)]) for s in specs]
                    added_ids = store.insert_chunks(rows)
                    new_ids.extend(added_ids)
                    report.chunks_added += len(added_ids)
                    res.chunks = len(specs)
                    store.put_document(c.source, sha256=sha, mtime=file_mtime, size=size, kind=c.kind,
                                       status="ok", reason=res.reason, n_chunks=len(specs))
                for c, res in failed:  # stale chunks of a file that no longer reads leave the index
                    report.chunks_removed += store.delete_chunks(c.source)
                    store.put_document(c.source, sha256=None, mtime=None, size=None, kind=c.kind,
                                       status=res.status, reason=res.reason, n_chunks=0)
                if rebuild:  # vectors from another model or chunking cannot mix with the new ones
                    kept = {c.source for c, *_ in todo}
                    for src in store.sources():
                        if src not in kept:
                            log.warning("dropping %s from the index (re-ingest it with the new settings)", src)
                            report.chunks_removed += store.delete_document(src)
                if prune:
                    seen_sources = {c.source for c in cands}
                    for src in store.sources():
                        if src in seen_sources or _is_url(src):
                            continue
                        if not ws.path(src).exists():
                            report.chunks_removed += store.delete_document(src)
                            results.append(FileResult(src, "ok", "file no longer exists", "removed"))
                n_total = store.count_chunks()
                dim_known = int(ing.embedder.dim) if todo else int(store.get_meta("dim") or 384)
                kind = choose_kind(ws.config.index.kind, n_total, dim_known, ws.config.index.memory_budget_mb)
                changed = bool(todo) or report.chunks_removed > 0 or rebuild or store.get_meta("faiss_kind") != kind
                generation = int(store.get_meta("generation") or 0) + (1 if changed else 0)
                dim = int(ing.embedder.dim) if todo else int(store.get_meta("dim") or 0)
                store.set_meta("generation", str(generation))
                store.set_meta("embedding_model", ws.config.embedding.model)
                store.set_meta("embedding_vectors", family)
                store.set_meta("chunking", chunking_sig)
                store.set_meta("faiss_kind", kind)
                if dim:
                    store.set_meta("dim", str(dim))
                store.con.execute("COMMIT")
            except BaseException:
                store.con.execute("ROLLBACK")
                raise
            # 4. FAISS, derived from SQLite, replaced atomically
            _update_faiss(ws, store, kind=kind, dim=dim or 384, generation=generation,
                          old_generation=old_generation, new_ids=new_ids,
                          removed=report.chunks_removed, full=rebuild, n_total=n_total)
            report.files = results
            report.total_chunks = n_total
            report.total_documents = len(store.sources())
        finally:
            store.close()
    report.seconds = round(time.perf_counter() - t0, 3)
    _audit_ingest(ws, report)
    return report


TOMBSTONE_LIMIT = 0.2


def _update_faiss(ws: Workspace, store: IndexStore, *, kind: str, dim: int, generation: int, old_generation: int,
                  new_ids: list[int], removed: int, full: bool, n_total: int) -> None:
    """Bring index.faiss to ``generation``. Flat/IVF: rebuilt from SQLite (seconds even at 100k).
    HNSW (slow to build, no deletes): new vectors are added to the saved graph and removed ids
    stay as tombstones that searches skip (SQLite has no row for them), until tombstones pass
    20% of the chunks and the graph is rebuilt."""
    import numpy as np

    existing = load_faiss(ws.index_dir)
    if existing is not None and str(existing[1].get("generation")) == str(generation):
        return
    meta: dict[str, Any] = {
        "format": f"raftsmith-index/{store.get_meta('schema_version')}", "generation": generation, "n_chunks": n_total, "dim": dim,
        "embedding_model": ws.config.embedding.model, "faiss_kind": kind, "tombstones": 0,
        "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if (kind == "hnsw" and not full and existing is not None
            and existing[1].get("faiss_kind") == "hnsw"
            and str(existing[1].get("generation")) == str(old_generation)):
        tombstones = int(existing[1].get("tombstones", 0)) + removed
        if tombstones <= TOMBSTONE_LIMIT * max(n_total, 1):
            index = existing[0]
            if new_ids:
                stored = store.vectors_for_ids(new_ids)
                ids = np.asarray(new_ids, dtype=np.int64)
                mat = np.stack([stored[i] for i in new_ids]).astype(np.float32)
                index.add_with_ids(mat, ids)
            meta["tombstones"] = tombstones
            if existing[1].get("search"):
                meta["search"] = existing[1]["search"]
            save_faiss(ws.index_dir, index, meta)
            return
    ids_all, vecs = store.all_vectors()
    index = build_faiss(ids_all, vecs, kind, dim, ws.config.index.memory_budget_mb)
    search = calibrate(index, vecs, ids_all, ws.config.index.recall_target)
    if search:
        meta["search"] = search
    save_faiss(ws.index_dir, index, meta)


def _embed_all(ing: _Ingestor, store: IndexStore, todo: list[Any], report: IngestReport) -> dict[str, np.ndarray]:
    vectors: dict[str, np.ndarray] = {}
    needed: dict[str, str] = {}  # embed_sha -> text
    for c, res, *_rest, specs in todo:
        reusable = store.vectors_by_embed_sha(c.source)
        n_new = 0
        for s in specs:
            key = ing.embed_sha(s)
            if key in vectors or key in needed:
                continue
            if key in reusable:
                vectors[key] = reusable[key]
            else:
                needed[key] = embed_text(s)
                n_new += 1
        res.embedded = n_new
    if not needed:
        return vectors
    keys = list(needed)
    batch = max(1, ing.cfg.embedding.batch_size) * 4
    advance = counter(ing.progress, len(keys), "embedding chunks")
    for start in range(0, len(keys), batch):
        part = keys[start:start + batch]
        mat = ing.embedder.encode([needed[k] for k in part])
        for k, v in zip(part, mat, strict=True):
            vectors[k] = v
        report.embeddings_computed += len(part)
        advance(len(part))
    return vectors


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
