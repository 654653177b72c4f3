"""``run_train_retriever``: tune the workspace's embedder on its RAFT rows and put it in service.

1. pairs from the training rows (never eval or held-out phrasings; builder.retriever.pairs)
2. recall@k of the live index on the eval rows' questions (the "base" figures)
3. fine-tune (builder.retriever.trainer) into a temporary folder, renamed when complete
4. re-embed a staged copy of the index through the ingest pipeline under the new model
5. recall@k of the staged index (the "tuned" figures)
6. swap the index, point embedding.model at the tuned folder in raftsmith.yaml, write the
   report (workspace, model folder, export manifests)

Until step 6 nothing the user had is touched; a failure removes what this run wrote. A tuned
model that finds fewer eval questions than the base is not switched to unless forced.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from builder.retriever.evaluate import recall_at_k
from builder.retriever.pairs import load_pairs, stored_contexts
from builder.retriever.report import MODEL_REPORT_NAME, write_reports
from builder.retriever.switch import (
    reingest_paths,
    restore_index,
    set_embedding_model,
    staged_index,
    swap_index,
)
from rag.config import EmbeddingConfig, RetrieverTrainConfig, Workspace
from rag.errors import ConfigError, IndexStoreError
from rag.index.store import writer_lock
from rag.progress import Progress, emit

__all__ = ["RetrieverTrainResult", "run_train_retriever"]

log = logging.getLogger(__name__)


@dataclass
class RetrieverTrainResult:
    model: str  # the embedding.model value of the tuned embedder (relative to the workspace)
    base_model: str  # what training started from
    previous_model: str  # what the index used before
    switched: bool
    reason: str
    pairs: int
    eval_questions: int
    hyperparameters: dict[str, Any]
    device: str
    train_seconds: float
    reembed_seconds: float
    steps: int
    final_loss: float | None
    base: dict[str, dict[str, float]] = field(default_factory=dict)
    tuned: dict[str, dict[str, float]] = field(default_factory=dict)
    chunks: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    train_file: str = ""
    eval_file: str | None = None
    report_path: str = ""
    exports_updated: list[str] = field(default_factory=list)
    created_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _start_model(ws: Workspace) -> str:
    """Retraining starts again from the model a tuned embedder was made from, not from the tuned
    one (a second pass over the same pairs would only overfit them)."""
    from rag.index.embedder import tuned_from

    return tuned_from(ws.config.embedding, ws.root) or ws.config.embedding.model


def _settings(ws: Workspace, overrides: dict[str, Any]) -> RetrieverTrainConfig:
    """retriever.* from the config, with the flags given on top (checked like the config)."""
    from pydantic import ValidationError

    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return RetrieverTrainConfig.model_validate({**ws.config.retriever.model_dump(), **given})
    except ValidationError as err:
        bad = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"Invalid train-retriever setting ({bad}); fix the flag or retriever.* in raftsmith.yaml.") from None


def run_train_retriever(
    ws: Workspace,
    *,
    epochs: float | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    hard_negatives: int | None = None,
    max_seq_length: int | None = None,
    device: str | None = None,
    train_file: str | None = None,
    eval_file: str | None = None,
    base: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> RetrieverTrainResult:
    from builder.retriever.trainer import train_embedder
    from builder.train.run import utc_now
    from rag.index.embedder import resolve_model_dir
    from rag.retrieve import Retriever

    cfg = _settings(ws, {"epochs": epochs, "batch_size": batch_size, "lr": lr, "hard_negatives": hard_negatives,
                         "max_seq_length": max_seq_length})
    if not (ws.index_dir / "store.sqlite").is_file():
        raise IndexStoreError(f"No index at {ws.index_dir}. Run 'raftsmith ingest' first, then 'raftsmith generate'.")
    previous = ws.config.embedding.model or "default"
    resolve_model_dir(ws.config.embedding, ws.root)  # the index's embedder must load: a clear error if not
    start = base or _start_model(ws)
    try:
        start_dir = resolve_model_dir(EmbeddingConfig(model=start), ws.root)
    except ConfigError as err:
        if base is None:
            raise
        raise ConfigError(f"--base: {err}") from None
    dev = device or ws.config.embedding.device

    with Retriever.from_workspace(ws) as live:
        chunks = live.all_chunks()
        pairs = load_pairs(ws, chunks, train_file=train_file, eval_file=eval_file,
                           hard_negatives=cfg.hard_negatives, seed=cfg.seed, contexts=stored_contexts(live))
        emit(progress, 0, 0, "recall of the current embedder")
        base_recall = recall_at_k(live, pairs.eval_queries)

    out_root = ws.path(cfg.out_dir)
    out_root.mkdir(parents=True, exist_ok=True)
    remove_stale(out_root)
    name = f"{ws.config.corpus.name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    final = out_root / name
    n = 1
    while final.exists():
        n += 1
        final = out_root / f"{name}-{n}"
    partial = out_root / f".{final.name}.partial-{os.getpid()}"
    model_value = _relative(ws, final)
    try:
        stats = train_embedder(start_dir, pairs.pairs, partial, cfg, dev, progress)
        os.replace(partial, final)  # complete: nothing points at this fresh name yet
        t0 = time.perf_counter()
        tuned_recall, n_chunks, switched, reason = _reembed_and_switch(ws, model_value, pairs.eval_queries,
                                                                       base_recall, force, progress)
        reembed_s = time.perf_counter() - t0
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(final, ignore_errors=True)  # only ever removed here before the switch
        raise
    result = RetrieverTrainResult(
        model=model_value, base_model=start, previous_model=previous, switched=switched, reason=reason,
        pairs=len(pairs.pairs), eval_questions=len(pairs.eval_queries),
        hyperparameters={"epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": cfg.lr,
                         "hard_negatives": cfg.hard_negatives, "max_seq_length": stats.max_seq_length,
                         "seed": cfg.seed, "loss": "MultipleNegativesRankingLoss"},
        device=stats.device, train_seconds=stats.seconds, reembed_seconds=round(reembed_s, 2), steps=stats.steps,
        final_loss=stats.final_loss, base=base_recall, tuned=tuned_recall, chunks=n_chunks,
        skipped=pairs.skipped, train_file=_relative(ws, Path(pairs.train_file)),
        eval_file=_relative(ws, Path(pairs.eval_file)) if pairs.eval_file else None, created_at=utc_now(),
    )
    if switched:
        _remove_older(ws, out_root, final, previous)
        result.report_path, result.exports_updated = write_reports(_with_model(ws, model_value), final,
                                                                   result.to_dict())
    else:
        shutil.rmtree(final, ignore_errors=True)
        result.report_path = str(write_reports(ws, None, result.to_dict())[0])
    return result


def _reembed_and_switch(ws: Workspace, model: str, queries: list[Any], base_recall: dict[str, dict[str, float]],
                        force: bool, progress: Progress | None) -> tuple[dict[str, dict[str, float]], int, bool, str]:
    """Re-embed a staged copy of the index under ``model``, measure it, and swap it in unless it is
    worse; the live index stays locked for writers throughout, so no ingest is lost in the swap."""
    with writer_lock(ws.index_dir):
        remove_stale(ws.index_dir.parent)  # staged copies of killed runs (we hold the writer lock)
        return _switch_locked(ws, model, queries, base_recall, force, progress)


def _switch_locked(ws: Workspace, model: str, queries: list[Any], base_recall: dict[str, dict[str, float]],
                   force: bool, progress: Progress | None) -> tuple[dict[str, dict[str, float]], int, bool, str]:
    from rag.ingest.pipeline import ingest
    from rag.retrieve import Retriever

    with staged_index(ws) as stage:
        paths = reingest_paths(ws, _stored_sources(ws))
        staged_ws = _with_model(ws, model, index_path=stage)
        emit(progress, 0, 0, "re-embedding the index with the tuned model")
        report = ingest(staged_ws, paths, progress=progress)
        with Retriever(stage, staged_ws.config.embedding, ws.root) as tuned_r:
            tuned = recall_at_k(tuned_r, queries)
        mode = ws.config.chat.mode if ws.config.chat.mode != "bm25" else "dense"
        if base_recall and tuned[mode]["recall@5"] < base_recall[mode]["recall@5"] and not force:
            return tuned, report.total_chunks, False, (
                f"not switched: the tuned embedder finds fewer eval questions ({mode} recall@5 "
                f"{tuned[mode]['recall@5']} < {base_recall[mode]['recall@5']}); pass --force to use it anyway")
        old = swap_index(ws, stage)
        try:
            set_embedding_model(ws, model)
        except BaseException:
            restore_index(ws, old)
            raise
        shutil.rmtree(old, ignore_errors=True)
    return tuned, report.total_chunks, True, "switched" if base_recall else "switched (no eval rows: recall not measured)"


def _relative(ws: Workspace, p: Path) -> str:
    """A workspace-relative folder name (so the workspace, and its bundle, can move)."""
    try:
        return p.resolve().relative_to(ws.root).as_posix()
    except ValueError:
        return str(p.resolve())


def _with_model(ws: Workspace, model: str, index_path: Path | None = None) -> Workspace:
    cfg = ws.config.model_copy(deep=True)
    cfg.embedding.model = model
    if index_path is not None:
        cfg.index.path = str(index_path)
    return Workspace(ws.root, cfg, ws.config_path)


_STALE = re.compile(r"^\..+\.(?:partial|retune|old|failed)-(\d+)(?:\.trainer)?$")


def remove_stale(folder: Path) -> None:
    """Partial models and staged index copies of runs that were killed (their process is gone)."""
    for p in folder.glob(".*"):
        m = _STALE.match(p.name)
        if m is None or not p.is_dir():
            continue
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except PermissionError:
            pass  # another user's live process


def _stored_sources(ws: Workspace) -> list[str]:
    """The stored documents' source names, read from the live index."""
    from rag.index.store import IndexStore

    store = IndexStore(ws.index_dir, readonly=True)
    try:
        return store.sources()
    finally:
        store.close()


def _remove_older(ws: Workspace, out_root: Path, keep: Path, previous: str) -> None:
    """The embedder the index used before, when an earlier train-retriever wrote it: nothing
    points at it any more (user folders and the packaged model are never removed)."""
    if previous in ("", "default"):
        return
    old = ws.path(previous).resolve()
    if old != keep.resolve() and old.parent == out_root.resolve() and (old / MODEL_REPORT_NAME).is_file():
        shutil.rmtree(old, ignore_errors=True)

