"""``raftsmith train``: a thin shim over :func:`builder.train.run.run_train`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from builder.families import FAMILIES
from rag.cli.common import config_option, handle_errors, print_json
from rag.cli.progress import progress_bar
from rag.config import TRAINER_NAMES, load_workspace

F = TypeVar("F", bound=Callable[..., Any])


def row_file_options(f: F) -> F:
    """--train-file and --eval-file: the RAFT rows a training command reads (train and train-retriever)."""
    f = click.option("--eval-file", type=click.Path(dir_okay=False, path_type=str), default=None,
                     help="Eval JSONL (default: training_data/<corpus>.eval.jsonl when present).")(f)
    return click.option("--train-file", type=click.Path(dir_okay=False, path_type=str), default=None,
                        help="Training JSONL (default: training_data/<corpus>.train.jsonl).")(f)


@click.command("train")
@click.option("--family", type=click.Choice(list(FAMILIES)), default=None, help="Model family (default: student.family).")
@click.option("--base", default=None, help="Base model folder or HF id (default: the family's).")
@click.option("--epochs", type=click.FloatRange(min=0, min_open=True), default=None, help="Epochs (default: config/family).")
@click.option("--backend", type=click.Choice(TRAINER_NAMES), default=None,
              help="Trainer: unsloth (CUDA), hf (transformers+PEFT; CPU or CUDA), auto (default: student.backend).")
@click.option("--resume", is_flag=True, help="Continue the newest unfinished run from its last checkpoint.")
@row_file_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@config_option
@handle_errors
def train_cmd(family: str | None, base: str | None, epochs: float | None, backend: str | None, resume: bool,
              train_file: str | None, eval_file: str | None, as_json: bool, quiet: bool,
              config_path: str | None) -> None:
    """LoRA/QLoRA fine-tune the student on the RAFT rows (loss on assistant turns only)."""
    from builder.train.run import run_train

    ws = load_workspace(config_path)
    with progress_bar(not (as_json or quiet)) as progress:
        res = run_train(ws, family=family, base=base, epochs=epochs, backend=backend, resume=resume,
                        train_file=train_file, eval_file=eval_file, progress=progress)
    if as_json:
        print_json(res.to_dict())
        return
    summary_table("train", [
        ("run", str(res.run_dir)), ("family / backend", f"{res.family} / {res.backend}"),
        ("base model", res.base_model), ("rows (train / eval)", f"{res.train_rows} / {res.eval_rows}"),
        ("final train loss", _fmt(res.final_loss)), ("eval loss", _fmt(res.eval_loss)),
        ("time", f"{res.seconds:.0f} s ({res.tokens_per_s:.0f} tokens/s)"),
        ("report", f"{res.report_path}" + (f" + {res.plot_path.name}" if res.plot_path else "")),
        *([("dropped (too long)", str(res.dropped_too_long))] if res.dropped_too_long else []),
    ])
    click.echo("Next: raftsmith export")


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def summary_table(title: str, rows: list[tuple[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, show_header=False)
    for k, v in rows:
        t.add_row(k, str(v))
    Console().print(t)
