"""``raftsmith train-retriever``: a thin shim over :func:`builder.retriever.run.run_train_retriever`."""

from __future__ import annotations

import click

from builder.cli.train_cmds import row_file_options, summary_table
from rag.cli.common import config_option, handle_errors, print_json
from rag.cli.progress import progress_bar
from rag.config import load_workspace


def _fmt_recall(figures: dict[str, dict[str, float]], mode: str) -> str:
    got = figures.get(mode)
    if not got:
        return "-"
    return "  ".join(f"@{k.split('@')[1]} {v:.3f}" for k, v in got.items())


@click.command("train-retriever")
@click.option("--epochs", type=click.FloatRange(min=0, min_open=True), default=None, help="Epochs (default: retriever.epochs).")
@click.option("--batch-size", type=click.IntRange(min=2), default=None, help="Pairs per step (default: retriever.batch_size).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None, help="Learning rate (default: retriever.lr).")
@click.option("--hard-negatives", type=click.IntRange(0, 8), default=None,
              help="RAFT distractors per pair used as hard negatives (default: retriever.hard_negatives).")
@click.option("--max-seq-length", type=click.IntRange(min=16), default=None, help="Tokens per text while training.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default=None,
              help="Where to train (default: embedding.device; auto = CUDA when present).")
@click.option("--base", default=None, help="Model to start from (default: the configured embedder's own base).")
@row_file_options
@click.option("--force", is_flag=True, help="Switch to the tuned embedder even when its eval recall is lower.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@config_option
@handle_errors
def train_retriever_cmd(epochs: float | None, batch_size: int | None, lr: float | None, hard_negatives: int | None,
                        max_seq_length: int | None, device: str | None, base: str | None, train_file: str | None,
                        eval_file: str | None, force: bool, as_json: bool, quiet: bool, config_path: str | None) -> None:
    """Fine-tune the embedder on the RAFT rows' (question, oracle chunk) pairs and re-embed the index."""
    from builder.retriever.run import run_train_retriever

    ws = load_workspace(config_path)
    with progress_bar(not (as_json or quiet)) as progress:
        res = run_train_retriever(ws, epochs=epochs, batch_size=batch_size, lr=lr, hard_negatives=hard_negatives,
                                  max_seq_length=max_seq_length, device=device, base=base, train_file=train_file,
                                  eval_file=eval_file, force=force, progress=progress)
    if as_json:
        print_json(res.to_dict())
        return
    rows = [("tuned embedder", res.model), ("started from", res.base_model),
            ("pairs (train) / eval questions", f"{res.pairs} / {res.eval_questions}"),
            ("time (train / re-embed)", f"{res.train_seconds:.0f} s / {res.reembed_seconds:.0f} s on {res.device}")]
    for mode in ("dense", "hybrid"):
        rows.append((f"{mode} recall before", _fmt_recall(res.base, mode)))
        rows.append((f"{mode} recall tuned", _fmt_recall(res.tuned, mode)))
    rows += [("result", res.reason), ("report", res.report_path)]
    if res.exports_updated:
        rows.append(("export manifests updated", ", ".join(res.exports_updated)))
    summary_table("train-retriever", rows)
