"""``raftsmith ingest --ray ADDRESS``: read, parse, chunk and embed the corpus on a Ray cluster.

The driver (the process running ``ingest``) lists the files and looks up what the store holds
for each. Ray Data maps that list, a few files per call, over a pool of worker actors. Each
actor loads the workspace configuration and the embedding model once. For its files it reads
and hashes each one; a file whose hash matches the stored one comes back "unchanged". The
others are parsed, chunked, given their document context and embedded together. The driver
streams the results back in order and writes them as a local ingest does: batches of
``corpus.commit_every`` chunks, each its own transaction (so a stopped run resumes), then the
FAISS index from SQLite. Each block of results Ray hands back is a shard that the store merges.

Every node needs raftsmith installed, and must see the corpus and the workspace at the same
paths (a shared filesystem). The driver scans every chunk for secrets again, with the keys this
machine holds; a chunk it masks (``corpus.redact``) is embedded again here. A local ingest
reuses the vectors of unchanged chunk texts; on Ray, every chunk of a changed file is embedded
by its worker.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag.errors import ConfigError, IngestError

if TYPE_CHECKING:
    import numpy as np

    from rag.ingest.batches import Batches, Candidate, FileResult

log = logging.getLogger(__name__)

#: files handed to one worker call (their chunks are embedded together)
FILES_PER_CALL = 16
_FIELDS = ("source", "status", "reason", "action", "chunks", "sha", "mtime", "size", "specs", "vectors",
           "embedded")


def _matrix(blob: bytes, n: int) -> np.ndarray:
    import numpy as np

    return np.frombuffer(blob, dtype=np.float32).reshape(n, -1) if n else np.zeros((0, 0), dtype=np.float32)


class FileWorker:
    """A Ray Data actor: the files of one batch in, their chunks and vectors out."""

    def __init__(self, config_path: str, rebuild: bool):
        from rag.config import load_workspace
        from rag.ingest.batches import Ingestor

        self.ws = load_workspace(Path(config_path))
        self.ing = Ingestor(self.ws, None)
        self.rebuild = rebuild

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        import numpy as np

        from rag.ingest.batches import Candidate, FileResult, chunk_file
        from rag.ingest.context import embed_text

        out: dict[str, list[Any]] = {k: [] for k in _FIELDS}
        done = []
        for i in range(len(batch["source"])):
            mtime = float(batch["mtime"][i])
            c = Candidate(str(batch["source"][i]), str(batch["kind"][i]), Path(str(batch["path"][i])),
                           None if math.isnan(mtime) else mtime)
            res = FileResult(c.source, "ok")
            old = json.loads(str(batch["old"][i]))
            item, _ = chunk_file(self.ing, c, res, old, rebuild=self.rebuild)
            done.append((c, res, item))
        texts: dict[str, str] = {}
        for _, _, item in done:
            for s in item.specs if item else []:
                texts.setdefault(self.ing.embed_sha(s), embed_text(s))
        keys = list(texts)
        mat = self.ing.embedder.encode([texts[k] for k in keys]) if keys else np.zeros((0, 0))
        row_of = {k: r for r, k in enumerate(keys)}
        for c, res, item in done:
            specs = item.specs if item else []
            rows = [row_of[self.ing.embed_sha(s)] for s in specs]
            out["source"].append(c.source)
            out["status"].append(res.status)
            out["reason"].append(res.reason or "")
            out["action"].append(res.action or "")
            out["chunks"].append(res.chunks)
            out["sha"].append(item.sha if item else "")
            out["mtime"].append(item.mtime if item and item.mtime is not None else float("nan"))
            out["size"].append(item.size if item else 0)
            out["specs"].append(json.dumps([dataclasses.asdict(s) for s in specs]))
            out["vectors"].append(np.ascontiguousarray(mat[rows], dtype=np.float32).tobytes() if rows else b"")
            out["embedded"].append(len(specs))
        return out


def _init(address: str, workers: int | None) -> bool:
    """Connect to (or, for 'local', start) a Ray cluster; True when this process started it."""
    try:
        import ray
    except ImportError:
        raise ConfigError("'ingest --ray' needs Ray Data: pip install 'raftsmith[ray]' (ray[data]), on this "
                          "machine and on every node of the cluster.") from None
    if ray.is_initialized():
        return False
    if address == "local":
        ray.init(num_cpus=workers or os.cpu_count() or 1, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
        return True
    hint = ("Start it with 'ray start --head' and pass its address (host:6379, ray://host:10001, or 'auto' on "
            "a node of it), or use '--ray local' for one machine.")
    _reachable(address, hint)
    try:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise IngestError(f"Cannot reach the Ray cluster at '{address}' ({err}). {hint}") from None
    return False


def _reachable(address: str, hint: str) -> None:
    """Fail in seconds, not minutes, when nothing listens at a host:port address (ray.init
    itself retries for a long time)."""
    import socket

    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not host:
        if address not in ("auto",) and not address.startswith("ray://"):
            raise ConfigError(f"'--ray {address}': give host:port, ray://host:port, 'auto' or 'local'.")
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as err:
        raise IngestError(f"Cannot reach the Ray cluster at '{address}' ({err.strerror or err}). {hint}") from None


def read_on_ray(run: Batches, cands: list[Candidate], results: list[FileResult], *, address: str,
                workers: int | None, commit: Callable[[], None]) -> None:
    """Fill ``run`` from the Ray workers' results, calling ``commit`` whenever a batch is full."""
    import ray
    import ray.data

    from rag.ingest.batches import FileResult, Item
    from rag.ingest.chunker import ChunkSpec
    from rag.ingest.secret_scan import scan_chunks
    from rag.progress import emit

    started = _init(address, workers)
    try:
        n_workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True  # results come back in the files' order
        ctx.enable_progress_bars = False
        rows = [{"source": c.source, "path": str(c.path), "kind": c.kind,
                 "mtime": float("nan") if c.mtime is None else float(c.mtime),
                 "old": json.dumps(run.store.document(c.source))} for c in cands]
        by_source: dict[str, tuple[Candidate, FileResult]] = {}
        for c in cands:
            res = FileResult(c.source, "ok")
            results.append(res)
            by_source[c.source] = (c, res)
        if not rows:
            return
        ds = ray.data.from_items(rows).map_batches(
            FileWorker, fn_constructor_kwargs={"config_path": str(run.ws.config_path), "rebuild": run.rebuild},
            batch_size=FILES_PER_CALL, compute=ray.data.ActorPoolStrategy(size=n_workers), num_cpus=1,
            batch_format="numpy")
        files_done = 0
        for batch in ds.iter_batches(batch_size=FILES_PER_CALL, batch_format="numpy"):
            for i in range(len(batch["source"])):
                c, res = by_source[str(batch["source"][i])]
                res.status = str(batch["status"][i])
                res.reason = str(batch["reason"][i]) or None
                res.action = str(batch["action"][i]) or None
                res.chunks = int(batch["chunks"][i])
                item = None
                specs = [ChunkSpec(**d) for d in json.loads(str(batch["specs"][i]))]
                if specs:
                    mat = _matrix(bytes(batch["vectors"][i]), len(specs))
                    vectors = {run.ing.embed_sha(s): v for s, v in zip(specs, mat, strict=True)}
                    masked = scan_chunks(run.ws, c.source, specs)  # with this machine's keys too
                    mtime = float(batch["mtime"][i])
                    item = Item(c, res, str(batch["sha"][i]), None if math.isnan(mtime) else mtime,
                                 int(batch["size"][i]), masked, vectors)
                    res.embedded = int(batch["embedded"][i])
                    run.report.embeddings_computed += res.embedded
                run.add(c, res, item)
                files_done += 1
                if run.pending_chunks >= run.ws.config.corpus.commit_every:
                    commit()
            emit(run.ing.progress, files_done, len(cands), f"files read and embedded on Ray ({n_workers} workers)")
    finally:
        if started:
            ray.shutdown()
