"""``raftsmith train`` and ``raftsmith export``: thin shims over run_train / run_export."""

from __future__ import annotations

from typing import Any

import click

from builder.families import FAMILIES
from rag.cli.common import config_option, handle_errors, print_json
from rag.config import load_workspace


@click.command("train")
@click.option("--family", type=click.Choice(list(FAMILIES)), default=None, help="Model family (default: student.family).")
@click.option("--base", default=None, help="Base model folder or HF id (default: the family's).")
@click.option("--epochs", type=click.FloatRange(min=0, min_open=True), default=None, help="Epochs (default: config/family).")
@click.option("--backend", type=click.Choice(["auto", "hf", "unsloth"]), default=None,
              help="Trainer: unsloth (CUDA), hf (transformers+PEFT; CPU or CUDA), auto (default: student.backend).")
@click.option("--resume", is_flag=True, help="Continue the newest unfinished run from its last checkpoint.")
@click.option("--train-file", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Training JSONL (default: training_data/<corpus>.train.jsonl).")
@click.option("--eval-file", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Eval JSONL (default: training_data/<corpus>.eval.jsonl when present).")
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
    res = run_train(ws, family=family, base=base, epochs=epochs, backend=backend, resume=resume,
                    train_file=train_file, eval_file=eval_file, progress=not (as_json or quiet))
    if as_json:
        print_json(res.to_dict())
        return
    _table("train", [
        ("run", str(res.run_dir)), ("family / backend", f"{res.family} / {res.backend}"),
        ("base model", res.base_model), ("rows (train / eval)", f"{res.train_rows} / {res.eval_rows}"),
        ("final train loss", _fmt(res.final_loss)), ("eval loss", _fmt(res.eval_loss)),
        ("time", f"{res.seconds:.0f} s ({res.tokens_per_s:.0f} tokens/s)"),
        ("report", f"{res.report_path}" + (f" + {res.plot_path.name}" if res.plot_path else "")),
        *([("dropped (too long)", str(res.dropped_too_long))] if res.dropped_too_long else []),
    ])
    click.echo("Next: raftsmith export")


@click.command("export")
@click.option("--quant", "quants", multiple=True, help="Quantization (repeatable): q4_k_m, q5_k_m, q8_0, f16 (default: export.quantizations).")
@click.option("--adapter/--no-adapter", default=None, help="Also write the LoRA adapter GGUF (default: export.adapter).")
@click.option("--name", default=None, help="Export folder name under gguf/ (default: <corpus>-<family>).")
@click.option("--run", "run_dir", type=click.Path(file_okay=False, path_type=str), default=None,
              help="Training run folder (default: the newest finished run).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--quiet", is_flag=True, help="No progress output.")
@config_option
@handle_errors
def export_cmd(quants: tuple[str, ...], adapter: bool | None, name: str | None, run_dir: str | None,
               as_json: bool, quiet: bool, config_path: str | None) -> None:
    """Merge, convert to GGUF with llama.cpp, quantize, write Modelfiles, verify, manifest."""
    from builder.export.run import run_export

    ws = load_workspace(config_path)
    res = run_export(ws, run_dir=run_dir, quantizations=list(quants) or None, adapter=adapter, name=name,
                     progress=not (as_json or quiet))
    if as_json:
        print_json(res.to_dict())
        return
    rows = [(f["path"], f"{f['role']}  {f['quantization'] or ''}  {f['size'] / 1e6:.1f} MB") for f in res.files]
    rows += [(f"verify {v.path}{' + ' + v.adapter if v.adapter else ''}", f"{'ok' if v.ok else 'FAIL'}: {v.text[:60]!r}")
             for v in res.verification]
    _table(f"export: {res.export_dir}", rows)
    click.echo(f"Next: raftsmith register   (or: ollama create NAME -f {res.export_dir / 'Modelfile'})")


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def _table(title: str, rows: list[tuple[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, show_header=False)
    for k, v in rows:
        t.add_row(k, str(v))
    Console().print(t)
