"""Fine-tune a sentence-transformers embedder on (question, oracle chunk, hard negatives) pairs.

sentence-transformers' own trainer with MultipleNegativesRankingLoss: for each question its
oracle chunk must score above every other chunk in the batch (the other pairs' positives and
all hard negatives). The no-duplicates batch sampler keeps two questions about the same chunk
out of one batch, where one's positive would count as the other's negative.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.retriever.pairs import Pair
from rag.config import RetrieverTrainConfig
from rag.errors import TrainingError
from rag.progress import Progress, emit

__all__ = ["TrainStats", "pick_device", "train_embedder"]

log = logging.getLogger(__name__)


@dataclass
class TrainStats:
    steps: int
    seconds: float
    final_loss: float | None
    device: str
    max_seq_length: int


def pick_device(device: str) -> str:
    """'auto' -> cuda when present, else cpu (mps is left to an explicit choice: its kernels for
    training small encoders are slower than the CPU's on most laptops)."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _dataset(pairs: Sequence[Pair]) -> Any:
    from datasets import Dataset

    n_neg = min((len(p.negatives) for p in pairs), default=0)
    cols: dict[str, list[str]] = {"anchor": [p.question for p in pairs], "positive": [p.positive for p in pairs]}
    for j in range(n_neg):
        cols[f"negative_{j + 1}"] = [p.negatives[j] for p in pairs]
    return Dataset.from_dict(cols)


def train_embedder(start_dir: Path, pairs: Sequence[Pair], out_dir: Path, cfg: RetrieverTrainConfig,
                   device: str, progress: Progress | None = None) -> TrainStats:
    """Train from the model in ``start_dir`` and save the result to ``out_dir`` (a new folder)."""
    import torch
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from transformers import TrainerCallback

    try:  # sentence-transformers >= 6 keeps the losses per model type
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    except ImportError:  # 3.x - 5.x
        from sentence_transformers.losses import MultipleNegativesRankingLoss  # type: ignore[no-redef]

    from rag.index.embedder import _quiet_transformers

    _quiet_transformers()
    dev = pick_device(device)
    if dev == "cuda" and not torch.cuda.is_available():
        raise TrainingError("embedding.device is 'cuda' but no CUDA device is visible; set it to 'auto' or 'cpu'.")
    model = SentenceTransformer(str(start_dir), device=dev)
    serve_length = model.max_seq_length
    if cfg.max_seq_length is not None:
        model.max_seq_length = cfg.max_seq_length
    batch = max(2, min(cfg.batch_size, len(pairs)))
    steps_per_epoch = max(1, math.ceil(len(pairs) / batch))
    total = max(1, math.ceil(steps_per_epoch * cfg.epochs))
    losses_seen: list[float] = []

    class _Report(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            emit(progress, int(state.global_step), int(state.max_steps or total), "train-retriever")

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any) -> None:
            if logs and "loss" in logs:
                losses_seen.append(float(logs["loss"]))

    work = out_dir.with_name(out_dir.name + ".trainer")  # the HF trainer's scratch folder (no checkpoints)
    bf16 = dev == "cuda" and torch.cuda.is_bf16_supported()
    args = SentenceTransformerTrainingArguments(
        output_dir=str(work),
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=batch,
        learning_rate=cfg.lr,
        warmup_steps=max(1, round(0.1 * total)),
        batch_sampler="no_duplicates",  # the BatchSamplers value, by name in every version
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=bf16,
        fp16=dev == "cuda" and not bf16,
        use_cpu=dev == "cpu",
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        logging_steps=max(1, min(10, steps_per_epoch)),
        disable_tqdm=True,
        dataloader_drop_last=False,
    )
    loss = MultipleNegativesRankingLoss(model)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=_dataset(pairs), loss=loss,
                                         callbacks=[_Report()])
    t0 = time.perf_counter()
    emit(progress, 0, total, "train-retriever")
    try:
        trainer.train()
    except torch.cuda.OutOfMemoryError:
        raise TrainingError(f"Out of GPU memory at batch size {batch}: lower retriever.batch_size "
                            "(or --batch-size) or retriever.max_seq_length.") from None
    seconds = time.perf_counter() - t0
    trained_length = int(model.max_seq_length or 0)
    # A shorter length is a training-time saving only: the saved model reads as much as the base
    # did, so ingest chunks exactly as before (its chunk budget follows the model's length).
    model.max_seq_length = serve_length
    model.save(str(out_dir))
    shutil.rmtree(work, ignore_errors=True)
    return TrainStats(steps=int(trainer.state.global_step or 0), seconds=round(seconds, 2),
                      final_loss=round(losses_seen[-1], 5) if losses_seen else None, device=dev,
                      max_seq_length=trained_length)
