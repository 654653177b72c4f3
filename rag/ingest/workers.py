"""``corpus.parse_workers``: files read, hashed, parsed and chunked in spawned processes, a few
files ahead of the ingest process, which embeds and commits meanwhile.

A worker loads the workspace and the embedder's tokenizer alone (rag.index.embedder.TokenCounter:
the same token counts and limit as the loaded embedder, so the same chunks), never the model.
Results come back in the files' order. Spawned, not forked: a fork of a process that holds
torch's threads can deadlock.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag.ingest.batches import Candidate, FileResult, Ingestor, Item, chunk_file

if TYPE_CHECKING:
    from rag.ingest.batches import Batches

_WORKER: dict[str, Any] = {}


def worker_start(config_path: str, rebuild: bool) -> None:
    """In a parse worker: the workspace, and an Ingestor whose "embedder" is the tokenizer alone."""
    from rag.config import load_workspace
    from rag.index.embedder import TokenCounter, resolve_model_dir

    ws = load_workspace(Path(config_path))
    ing = Ingestor(ws, None)
    model_dir = resolve_model_dir(ws.config.embedding, ws.root)
    if TokenCounter.usable(model_dir):
        ing._embedder = TokenCounter(model_dir)
    _WORKER.update(ing=ing, rebuild=rebuild)


def worker_read(c: Candidate, old: dict[str, Any] | None) -> tuple[FileResult, Item | None, int]:
    res = FileResult(c.source, "ok")
    item, size = chunk_file(_WORKER["ing"], c, res, old, rebuild=_WORKER["rebuild"])
    return res, item, size


def read_ahead(run: Batches, cands: list[Candidate], workers: int) -> Iterator[tuple[Candidate, FileResult, Item | None, int]]:
    """The files read, parsed and chunked by ``workers`` processes, in order, at most a few
    files ahead of the caller (which embeds and commits meanwhile)."""
    import collections
    import multiprocessing
    from concurrent.futures import Future, ProcessPoolExecutor

    ahead = max(4, 4 * workers)
    # spawn: a fork of a process that holds torch's threads can deadlock
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=worker_start, initargs=(str(run.ws.config_path), run.rebuild)) as pool:
        queue: collections.deque[tuple[Candidate, Future[tuple[FileResult, Item | None, int]]]] = collections.deque()
        todo = iter(cands)
        for c in todo:
            queue.append((c, pool.submit(worker_read, c, run.store.document(c.source))))
            if len(queue) >= ahead:
                break
        while queue:
            c, fut = queue.popleft()
            nxt = next(todo, None)
            if nxt is not None:
                queue.append((nxt, pool.submit(worker_read, nxt, run.store.document(nxt.source))))
            res, item, size = fut.result()
            if item is not None:
                item.cand, item.res = c, res
            yield c, res, item, size
