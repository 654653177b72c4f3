"""``run_train``: config + registry -> a LoRA adapter in a run folder, with a report.

A run folder (``student.output_dir/<UTC stamp>-<family>``) holds ``run.json`` (everything
export needs: base model identity, data hashes, hyperparameters, versions, status),
``checkpoints/`` (one per epoch, for ``--resume``), ``adapter/`` (the PEFT adapter and
tokenizer), ``report.json`` and ``loss.png``. ``LATEST`` in the output dir names the newest run.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from builder.families import Family, chat_format, get_family
from builder.train import data as datamod
from builder.train.backends import (
    OOM_HELP,
    Backend,
    LoraSpec,
    is_oom,
    quiet_libraries,
    select_backend,
    text_config,
)
from builder.train.base_model import resolve_base
from builder.train.frozen_cache import attach as attach_frozen_cache
from builder.train.loss import make_trainer_class
from builder.train.report import make_progress_callback, write_report
from rag.config import Workspace
from rag.errors import TrainingError
from rag.fsutil import atomic_write
from rag.progress import Progress

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
LATEST = "LATEST"


@dataclass
class TrainResult:
    run_dir: Path
    adapter_dir: Path
    family: str
    backend: str
    base_model: str
    train_rows: int
    eval_rows: int
    final_loss: float | None
    eval_loss: float | None
    seconds: float
    tokens_per_s: float
    report_path: Path
    plot_path: Path | None
    resumed_from: str | None = None
    dropped_too_long: int = 0
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    knowledge: dict[str, Any] | None = None  # closed-book accuracy per epoch, and the epoch kept
    replay_rows: int = 0  # the base model's own answers to general prompts, trained on beside the data
    adapter_scale: float = 1.0  # the LoRA update's strength baked into the saved adapter

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("run_dir", "adapter_dir", "report_path", "plot_path"):
            d[k] = str(d[k]) if d[k] is not None else None
        return d


def utc_now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def write_json_atomic(path: Path, obj: Any) -> None:
    """run.json and export manifests: sorted, indented JSON through the one atomic write."""
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=True, default=str))


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str] = {}
    for pkg in ("torch", "transformers", "peft", "trl", "accelerate", "unsloth", "bitsandbytes",
                "llama_cpp_python", "gguf", "raftsmith"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


def hyperparameters(ws: Workspace, family: Family, epochs: float | None) -> dict[str, Any]:
    """The values the config sets, the family's registry defaults where it leaves them None.

    ``epochs`` (the --epochs option) wins over both. A value the user wrote is theirs even
    when it equals what the family would have chosen.
    """
    st = ws.config.student
    lo = st.lora
    epochs = epochs or st.epochs or family.epochs
    if st.packing:
        # Rows are padded per batch; packing several rows into one sequence would need
        # cross-row attention masking to keep the loss assistant-only. Not implemented.
        log.warning("student.packing is not supported yet and is ignored (rows are padded per batch)")
    return {
        "r": lo.r or family.r,
        "alpha": lo.alpha or family.alpha,
        "dropout": lo.dropout,
        "rslora": lo.rslora if lo.rslora is not None else family.rslora,
        "target_modules": list(lo.target_modules or family.target_modules),
        "top_layers": lo.top_layers,
        "lr": st.lr or family.lr,
        "epochs": float(epochs),
        "batch_size": st.batch_size,
        "grad_accum": st.grad_accum,
        "max_seq_len": st.max_seq_len,
        "packing": False,
        "seed": st.seed,
        "precision": st.precision,
        "replay": st.replay,
        "adapter_scale": st.adapter_scale,
        "lr_scheduler": "cosine",
        "warmup_fraction": 0.05,
    }


def runs_root(ws: Workspace) -> Path:
    return ws.path(ws.config.student.output_dir)


def latest_run(ws: Workspace, done: bool | None = None) -> Path | None:
    """The newest run folder (optionally only finished / unfinished ones)."""
    root = runs_root(ws)
    if not root.is_dir():
        return None
    runs = sorted((p for p in root.iterdir() if (p / RUN_FILE).is_file()), key=lambda p: p.name, reverse=True)
    for r in runs:
        status = json.loads((r / RUN_FILE).read_text()).get("status")
        if done is None or (status == "done") == done:
            return r
    return None


def _default_data(ws: Workspace, split: str) -> Path:
    return ws.training_dir / f"{ws.config.corpus.name}.{split}.jsonl"


def run_train(
    ws: Workspace,
    family: str | None = None,
    base: str | None = None,
    epochs: float | None = None,
    backend: str | None = None,
    resume: bool = False,
    train_file: str | os.PathLike[str] | None = None,
    eval_file: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> TrainResult:
    st = ws.config.student
    prev: dict[str, Any] | None = None
    run_dir: Path | None = None
    if resume:
        run_dir = latest_run(ws, done=False)
        if run_dir is None:
            raise TrainingError(f"Nothing to resume: no unfinished run in {runs_root(ws)}. Start one with 'raftsmith train'.")
        prev = json.loads((run_dir / RUN_FILE).read_text())
        family = prev["family"]
        base = prev["base_model"]["request"]
        train_file = prev["training_data"]["train"]["path"]
        eval_file = (prev["training_data"].get("eval") or {}).get("path")
        backend = prev["backend"]
    fam = get_family(family or st.family)
    fmt = chat_format(fam)
    hp = prev["hyperparameters"] if prev else hyperparameters(ws, fam, epochs)
    be: Backend = select_backend(backend or st.backend, st.quantization)
    base_req = base if base is not None else st.base
    train_ds = datamod.load_rows(Path(train_file) if train_file else _default_data(ws, "train"))
    eval_path = Path(eval_file) if eval_file else _default_data(ws, "eval")
    eval_ds = datamod.load_rows(eval_path) if (eval_file or eval_path.is_file()) else None

    be.preflight(fam, hp["batch_size"], hp["max_seq_len"])
    base_model = resolve_base(fam, base_req)
    load_path = base_model.path
    if be.name == "unsloth" and base_req is None and fam.unsloth_id:
        load_path = fam.unsloth_id  # the pre-quantized 4-bit checkpoint of the same model

    if run_dir is None:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        run_dir = runs_root(ws) / f"{stamp}-{fam.name}"
        run_dir.mkdir(parents=True, exist_ok=False)
    meta: dict[str, Any] = prev or {
        "status": "running",
        "created_at": utc_now(),
        "family": fam.name,
        "chat_format": fmt.name,
        "backend": be.name,
        "base_model": {"id": base_model.id, "path": base_model.path, "sha256": base_model.sha256,
                       "source": base_model.source, "request": base_req},
        "hyperparameters": hp,
        "training_data": {
            "train": {"path": str(train_ds.path.resolve()), "sha256": train_ds.sha256, "rows": len(train_ds.rows)},
            "eval": ({"path": str(eval_ds.path.resolve()), "sha256": eval_ds.sha256, "rows": len(eval_ds.rows)}
                     if eval_ds else None),
        },
        "versions": library_versions(),
    }
    write_json_atomic(run_dir / RUN_FILE, meta)
    (runs_root(ws) / LATEST).write_text(run_dir.name + "\n")

    lora = LoraSpec(hp["r"], hp["alpha"], hp["dropout"], hp["rslora"], hp["target_modules"], hp.get("top_layers"))
    t0 = time.time()
    quiet_libraries(progress is not None)
    try:
        model, tokenizer = be.load(load_path, fam, lora, hp["max_seq_len"], hp["seed"])
        replay: list[dict[str, Any]] = []
        if hp.get("replay"):
            from builder.train.replay import load_replay_prompts, replay_rows

            replay = replay_rows(model, tokenizer, fmt, load_replay_prompts()[: hp["replay"]])
        enc_train = datamod.encode_rows([*train_ds.rows, *replay], tokenizer, fmt, hp["max_seq_len"])
        frozen = attach_frozen_cache(model, st.reuse_frozen_layers and be.name == "hf", on_cuda=_cuda(),
                                     attention_dropout=_attention_dropout(model))
        enc_eval = datamod.encode_rows(eval_ds.rows, tokenizer, fmt, hp["max_seq_len"]) if eval_ds else None
        tracker = _knowledge_tracker(ws, eval_ds, tokenizer, fmt)
        trainer = _make_trainer(be, model, tokenizer, enc_train, enc_eval, hp, run_dir, progress)
        if tracker is not None:
            from builder.train.knowledge import make_callback

            trainer.add_callback(make_callback(tracker, st.select_patience))
        ckpt = _last_checkpoint(run_dir) if resume else None
        out = trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
        restored = tracker.restore_best(model) if tracker is not None else False
        scale = float(hp.get("adapter_scale", 1.0))
        if scale != 1.0:
            from builder.train.scale import bake_scale

            bake_scale(model, scale)
        eval_loss = None
        if enc_eval is not None and len(enc_eval.input_ids):
            # The per-epoch evaluation already ran on the final weights; reuse it.
            evals = [h["eval_loss"] for h in trainer.state.log_history
                     if "eval_loss" in h and h.get("step") == trainer.state.global_step]
            eval_loss = float(evals[-1]) if evals else float(trainer.evaluate()["eval_loss"])
    except TrainingError:
        raise
    except Exception as err:
        if is_oom(err):
            raise TrainingError(OOM_HELP) from None
        raise
    seconds = time.time() - t0
    adapter_dir = run_dir / "adapter"
    model.save_pretrained(adapter_dir)
    tokenizer.save_pretrained(adapter_dir)
    epochs_done = float(hp["epochs"])
    tokens_per_s = enc_train.tokens * epochs_done / max(out.metrics.get("train_runtime", seconds), 1e-9)
    report = write_report(run_dir, trainer.state.log_history, extra={
        "train_rows": len(enc_train.input_ids), "eval_rows": len(enc_eval.input_ids) if enc_eval else 0,
        "replay_rows": len(replay),
        "dropped_too_long": enc_train.dropped_too_long, "tokens_per_epoch": enc_train.tokens,
        "assistant_tokens_per_epoch": enc_train.assistant_tokens,
        "train_runtime_s": round(float(out.metrics.get("train_runtime", seconds)), 2),
        "total_s_incl_load": round(seconds, 2),
        "tokens_per_s": round(tokens_per_s, 1), "eval_loss": eval_loss, "backend": be.name,
        "knowledge": ({**tracker.to_dict(), "restored_best": restored} if tracker is not None else None),
        "frozen_layer_cache": frozen.to_dict() if frozen is not None else None,
        "adapter_scale": scale,
    })
    if frozen is not None:
        frozen.remove()
    knowledge = report.get("knowledge")
    meta.update({"status": "done", "finished_at": utc_now(), "final_loss": report["final_train_loss"],
                 "knowledge": knowledge, "adapter_scale": scale,
                 "eval_loss": eval_loss, "adapter": "adapter", "report": "report.json",
                 "used_rows": len(enc_train.input_ids), "dropped_too_long": enc_train.dropped_too_long})
    meta["quantization"] = ("nf4" if getattr(be, "quantized", be.name == "unsloth") else "none") if _cuda() else None
    write_json_atomic(run_dir / RUN_FILE, meta)
    return TrainResult(
        run_dir=run_dir, adapter_dir=adapter_dir, family=fam.name, backend=be.name,
        base_model=base_model.id, train_rows=len(enc_train.input_ids) - len(replay), replay_rows=len(replay),
        eval_rows=len(enc_eval.input_ids) if enc_eval else 0, final_loss=report["final_train_loss"],
        eval_loss=eval_loss, seconds=round(seconds, 2), tokens_per_s=round(tokens_per_s, 1),
        report_path=run_dir / "report.json", plot_path=report.get("plot_path"),
        resumed_from=str(ckpt) if ckpt else None, dropped_too_long=enc_train.dropped_too_long,
        hyperparameters=hp, knowledge=knowledge, adapter_scale=scale,
    )


def _knowledge_tracker(ws: Workspace, eval_ds: datamod.Dataset | None, tokenizer: Any, fmt: Any) -> Any:
    """Closed-book scoring per epoch, when the eval split holds phrasings to score."""
    st = ws.config.student
    if st.select_epoch != "closed_book" or eval_ds is None:
        return None
    from builder.train.knowledge import KnowledgeTracker, probes_from_rows

    probes = probes_from_rows(eval_ds.rows)[: st.select_max_questions]
    if not probes:
        return None
    return KnowledgeTracker(probes, tokenizer, fmt)


def _attention_dropout(model: Any) -> float:
    value = getattr(text_config(model), "attention_dropout", 0.0)
    return float(value) if isinstance(value, (int, float)) else 1.0


def _last_checkpoint(run_dir: Path) -> Path | None:
    # A checkpoint without trainer_state.json was cut off while being written: skip it.
    ckpts = sorted((p for p in (run_dir / "checkpoints").glob("checkpoint-*") if (p / "trainer_state.json").is_file()),
                   key=lambda p: int(p.name.split("-")[-1]))
    return ckpts[-1] if ckpts else None


def _make_trainer(be: Backend, model: Any, tokenizer: Any, enc_train: datamod.Encoded,
                  enc_eval: datamod.Encoded | None, hp: dict[str, Any], run_dir: Path,
                  progress: Progress | None) -> Any:
    import math

    from transformers import Trainer, TrainingArguments

    n = len(enc_train.input_ids)
    steps_per_epoch = math.ceil(n / hp["batch_size"] / hp["grad_accum"])
    total = max(1, math.ceil(steps_per_epoch * hp["epochs"]))
    has_eval = enc_eval is not None and len(enc_eval.input_ids) > 0
    precision = be.training_precision(hp.get("precision", "auto"))
    args = TrainingArguments(
        output_dir=str(run_dir / "checkpoints"),
        per_device_train_batch_size=hp["batch_size"],
        per_device_eval_batch_size=hp["batch_size"],
        gradient_accumulation_steps=hp["grad_accum"],
        learning_rate=hp["lr"],
        num_train_epochs=hp["epochs"],
        lr_scheduler_type=hp.get("lr_scheduler", "cosine"),
        warmup_steps=int(round(total * hp.get("warmup_fraction", 0.05))),
        logging_steps=1,
        # rows of one batch have similar lengths: short closed-book rows are not padded to RAFT rows
        train_sampling_strategy="group_by_length",
        eval_strategy="epoch" if has_eval else "no",
        save_strategy="epoch",
        save_total_limit=2,
        seed=hp["seed"],
        data_seed=hp["seed"],
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=not _cuda(),
        bf16=precision["bf16"],
        fp16=precision["fp16"],
    )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    callbacks = [make_progress_callback(total, progress)] if progress is not None else []
    # The hf backend trains with the gathered assistant-only loss; Unsloth brings its own fused one.
    trainer_cls = make_trainer_class() if be.name == "hf" else Trainer
    trainer = trainer_cls(
        model=model, args=args, data_collator=datamod.collate(pad),
        train_dataset=datamod.TokenDataset(enc_train),
        eval_dataset=datamod.TokenDataset(enc_eval) if has_eval and enc_eval is not None else None,
        processing_class=tokenizer, callbacks=callbacks,
    )
    # With tqdm off, transformers prints every log dict to stdout; the progress events replace that.
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    return trainer


def _cuda() -> bool:
    from builder.train.backends import cuda_available

    return cuda_available()
