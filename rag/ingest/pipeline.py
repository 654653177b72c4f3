"""``ingest(ws)``: files and llms.txt sites -> chunks -> embeddings -> SQLite + FAISS.

Incremental by content hash: an unchanged file costs one sha256 and no embedding; a changed
file's chunks are replaced (vectors of chunks whose text did not change are reused); with
``prune`` the documents gone from disk leave the index. One bad file never stops the batch:
each gets a status (ok / skipped / error) and a reason in the report. Files are written in
batches of ``corpus.commit_every`` chunks, one SQLite transaction each under the writer lock
(a stopped ingest keeps them and the next one goes on from there), then the FAISS file is
brought up to date atomically (rag.index.update). Files may be parsed in worker processes
(rag.ingest.workers) or on a Ray cluster (rag.ingest.distributed); what one file becomes and
how a batch is written is rag.ingest.batches.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rag.index.store import HNSW_THRESHOLD, IndexStore, writer_lock
from rag.index.update import update_faiss
from rag.ingest.batches import Batches, Candidate, FileResult, Ingestor, IngestReport, is_url
from rag.ingest.context import CONTEXT_VERSION, embed_text
from rag.ingest.parsers import kind_for
from rag.progress import Progress

if TYPE_CHECKING:

    from rag.config import Workspace

log = logging.getLogger(__name__)

CHUNKER_VERSION = "3"  # 3: word runs fill 90%, chunks span <= 32 chars per token, headings <= 300 chars


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


def candidates(ing: Ingestor, paths: Sequence[str], results: list[FileResult]) -> list[Candidate]:
    """The files (and crawled pages) that ``paths`` name, each once; the others reported in ``results``."""
    out: list[Candidate] = []
    seen: set[Path] = set()
    sources: set[str] = set()  # a file named twice (folder + file, or two URLs) is read once
    for entry in paths:
        if is_url(entry):
            from rag.ingest.crawl import crawl

            pages, failures = crawl(ing.ws, entry, progress=ing.progress)
            results.extend(FileResult(url, "error", reason) for url, reason in failures)
            for page in pages:
                if page.url not in sources:
                    sources.add(page.url)
                    kind = kind_for(page.url, page.content_type) or "text"
                    out.append(Candidate(page.url, kind, page.path, None))
            continue
        p = ing.ws.path(entry)
        if not os.path.lexists(p):
            results.append(FileResult(entry, "error", f"path not found: {p} (fix corpus.paths or the argument)"))
            continue
        files = _walk(p, results, ing.ws, seen) if p.is_dir() else iter([p])
        for f in files:
            fkind = kind_for(f)
            src = _source_name(ing.ws, f)
            if src in sources:
                continue
            sources.add(src)
            if fkind is None:
                results.append(FileResult(src, "skipped", f"unsupported file type '{f.suffix or f.name}'"))
                continue
            out.append(Candidate(src, fkind, f))
    return out



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
    ing = Ingestor(ws, progress)
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
            run = Batches(ws, store, ing, report, reset=reset, rebuild=rebuild, family=family,
                       chunking_sig=chunking_sig)
            results: list[FileResult] = []
            cands = candidates(ing, paths, results)
            run.begin(cands)
            if ray_address:
                from rag.ingest.distributed import read_on_ray

                read_on_ray(run, cands, results, address=ray_address, workers=ray_workers,
                            commit=lambda: run.commit(cands, prune=prune, results=results, final=False))
            elif ws.config.corpus.parse_workers > 0 and len(cands) > 1:
                from rag.ingest.workers import read_ahead

                for c, res, item, size in read_ahead(run, cands, ws.config.corpus.parse_workers):
                    results.append(res)
                    run.bytes_read += size
                    run.add(c, res, item)
                    if run.pending_chunks >= ws.config.corpus.commit_every:
                        run.commit(cands, prune=prune, results=results, final=False)
            else:
                for c in cands:
                    res = FileResult(c.source, "ok")
                    results.append(res)
                    run.read(c, res)
                    if run.pending_chunks >= ws.config.corpus.commit_every:
                        run.commit(cands, prune=prune, results=results, final=False)
            run.commit(cands, prune=prune, results=results, final=True)
            if run.n_total > HNSW_THRESHOLD:  # a big FAISS build: the model's memory goes first
                ing.release()
            # FAISS, derived from SQLite, replaced atomically
            update_faiss(ws, store, kind=run.kind, dim=run.dim or 384, generation=run.generation,
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
