"""Training progress events and the training report (report.json + loss.png)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rag.progress import Progress


def make_progress_callback(total_steps: int, progress: Progress) -> Any:
    """A transformers TrainerCallback reporting (step, steps, "train loss=... epoch=...")."""
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        def __init__(self) -> None:
            self.total = total_steps
            self.info = ""

        def _emit(self, state: Any) -> None:
            label = f"train {self.info}".rstrip()
            progress(int(state.global_step), int(state.max_steps or self.total), label)

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self._emit(state)

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self._emit(state)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None,
                   **kw: Any) -> None:
            if not logs:
                return
            info = " ".join(f"{k}={logs[k]:.4f}" for k in ("loss", "eval_loss") if k in logs)
            self.info = f"{info} epoch={state.epoch or 0:.2f}"
            self._emit(state)

    return ProgressCallback()


def summarize(log_history: list[dict[str, Any]]) -> dict[str, Any]:
    train = [(h["step"], h.get("epoch", 0.0), h["loss"]) for h in log_history if "loss" in h and "step" in h]
    evals = [(h["step"], h.get("epoch", 0.0), h["eval_loss"]) for h in log_history if "eval_loss" in h]
    final_train = None
    if train:
        last_epoch = max(e for _, e, _ in train)
        # Mean over the last epoch's steps: one step's loss on a tiny batch is noisy.
        tail = [loss for _, e, loss in train if e > last_epoch - 1.0] or [train[-1][2]]
        final_train = round(sum(tail) / len(tail), 5)
    return {
        "first_train_loss": train[0][2] if train else None,
        "final_train_loss": final_train,
        "final_eval_loss": evals[-1][2] if evals else None,
        "steps": train[-1][0] if train else 0,
        "train_curve": [{"step": s, "epoch": e, "loss": loss} for s, e, loss in train],
        "eval_curve": [{"step": s, "epoch": e, "loss": loss} for s, e, loss in evals],
    }


def plot_losses(summary: dict[str, Any], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:  # noqa: BLE001 - the report is still written without the picture
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    tc = summary["train_curve"]
    if tc:
        ax.plot([p["step"] for p in tc], [p["loss"] for p in tc], label="train", lw=1.2)
    ec = summary["eval_curve"]
    if ec:
        ax.plot([p["step"] for p in ec], [p["loss"] for p in ec], "o-", label="eval", lw=1.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (assistant tokens)")
    ax.set_title("raftsmith training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(run_dir: Path, log_history: list[dict[str, Any]], extra: dict[str, Any]) -> dict[str, Any]:
    summary = summarize(log_history)
    if extra.get("eval_loss") is not None:
        summary["final_eval_loss"] = extra["eval_loss"]
    plot = plot_losses(summary, run_dir / "loss.png")
    report = {**summary, **extra, "plot": plot.name if plot else None}
    (run_dir / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True))
    report["plot_path"] = plot
    return report
