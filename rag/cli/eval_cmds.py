"""``raftsmith eval``: the A/B evaluation and the retrieval check (:mod:`rag.evaluate`)."""

from __future__ import annotations

from typing import Any

import click

from rag.cli.common import (
    BACKEND_CHOICE,
    config_option,
    handle_errors,
    offline_option,
    print_json,
)
from rag.cli.progress import progress_bar
from rag.config import RERANK_NAMES, load_workspace
from rag.errors import ConfigError


def _retrieval_report(ws: Any, questions: list[str] | None, limit: int | None, k: int | None, as_json: bool,
                      rerankers: list[str] | None = None, compare: list[str] | None = None) -> None:
    from rag.evaluate import load_items, retrieval_recall

    rep = retrieval_recall(ws, load_items(ws, questions, limit), k=k, rerankers=rerankers, compare=compare)
    if as_json:
        print_json(rep)
        return
    chat = ws.config.chat
    click.echo(f"Retrieval recall@{rep['k']} over {rep['questions']} answerable questions (chat.mode is "
               f"{chat.mode}, chat.rerank is {chat.rerank}, embedding.model is {ws.config.embedding.model}):")
    width = max(7, *(len(m) for m in rep["recall"]))
    for mode, value in rep["recall"].items():
        click.echo(f"  {mode:<{width}} {value:.2f}  (MRR {rep['mrr'][mode]:.2f}, p50 {rep['p50_ms'][mode]:.1f} ms)"
                   f"{'  <- best' if mode == rep['best'] else ''}")
    for label, info in {n: v for n, v in rep.get("embedders", {}).items() if n != "index"}.items():
        if "error" in info:
            click.echo(f"Not compared: {info['model']}: {info['error']}")
            continue
        click.echo(f"ROW@{label} rows: the same chunks embedded with {info['model']} (in memory, "
                   f"{info['reembed_s']:.1f} s; the index is not changed).")
    if "rerankers" in rep:
        models = ", ".join(f"{n} = {label}" for n, label in rep["rerankers"].items())
        click.echo(f"MODE+RERANKER rows rerank the first {rep['rerank_depth']} candidates ({models}).")
    click.echo("Ties in recall go to the higher MRR (the answer-bearing passage ranked nearer the top).")
    mode, reranker = rep["best_mode"], rep["best_rerank"]
    if (mode, reranker) != (chat.mode, chat.rerank):
        click.echo(f"Set chat.mode: {mode} and chat.rerank: {reranker} in raftsmith.yaml to use the best "
                   "retrieval for these questions.")


@click.command("eval")
@click.option("--models", default="base,tuned", show_default=True, help="Comma-separated: base, tuned, export names.")
@click.option("--rag/--no-rag", "rag", default=None, help="Only with (or only without) retrieval; default: both.")
@click.option("--both", is_flag=True, help="Both RAG and closed book (the default).")
@click.option("--questions", "questions", multiple=True, type=click.Path(path_type=str),
              help="Question YAML, eval JSONL or a folder of them (repeatable; default: the eval split + "
                   "holdout YAML files).")
@click.option("--backend", type=BACKEND_CHOICE, default=None, help="Chat backend (default: chat.backend).")
@click.option("--limit", type=click.IntRange(1), default=None, help="Only the first N questions.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=str), default=None,
              help="Report folder (default: .raftsmith/eval/<timestamp>).")
@click.option("--judge", is_flag=True, help="Also grade answers with the teacher LLM (needs teacher.* configured and online).")
@click.option("--forgetting", is_flag=True,
              help="Also ask the packaged general-knowledge probe (110 questions, closed book) and report "
                   "retention: the share of the base model's right answers the tuned model keeps.")
@click.option("--retrieval", "retrieval_only", is_flag=True,
              help="Only measure retrieval: recall@k, MRR and p50 latency of dense, bm25 and hybrid on the questions, "
                   "each also reranked when chat.rerank or --rerank names a reranker (no answering model runs).")
@click.option("--preferences", "preferences_only", is_flag=True,
              help="Only summarise the arena marks made on the 'raftsmith ui' page (the human-preference row; no model runs).")
@click.option("--k", "k", type=click.IntRange(1, 100), default=None, help="k for --retrieval (default: chat.top_k).")
@click.option("--rerank", "rerankers", multiple=True, type=click.Choice(RERANK_NAMES),
              help="With --retrieval: also measure each mode reranked by this backend (repeatable; default: "
                   "chat.rerank when it is on; 'off' = no reranked rows).")
@click.option("--compare-embedder", "compare", multiple=True, metavar="MODEL",
              help="With --retrieval: also measure dense and hybrid with this embedding model (a folder, a cached hub "
                   "id, 'default', or 'base' = the model a tuned embedder was trained from), the chunks re-embedded "
                   "in memory (repeatable; default: 'base' for a tuned embedder on an index of up to 5,000 chunks; "
                   "'none' = no comparison).")
@click.option("--json", "as_json", is_flag=True)
@offline_option
@config_option
@handle_errors
def eval_cmd(models: str, rag: bool | None, both: bool, questions: tuple[str, ...], backend: str | None, limit: int | None,
             out_dir: str | None, judge: bool, forgetting: bool, retrieval_only: bool, preferences_only: bool, k: int | None,
             rerankers: tuple[str, ...], compare: tuple[str, ...], as_json: bool,
             offline: bool,
             config_path: str | None) -> None:
    """A/B evaluation: models x {RAG, closed book}; writes JSON, Markdown, HTML and a PNG chart."""
    from rag.evaluate import run_eval, summarize_marks, table_header, table_rows
    from rag.netguard import maybe_offline

    ws = load_workspace(config_path)
    if preferences_only:
        prefs = summarize_marks(ws)
        if as_json:
            print_json({"human_preference": prefs.to_dict() if prefs else None})
        else:
            click.echo(prefs.line() if prefs else "No arena marks yet: mark answers in the Arena view of 'raftsmith ui'.")
        return
    if compare and not retrieval_only:
        raise ConfigError("--compare-embedder goes with --retrieval (it compares retrieval, not answers).")
    if retrieval_only:
        others = None if not compare else [m for m in compare if m.lower() != "none"]
        _retrieval_report(ws, list(questions) or None, limit, k, as_json, list(rerankers) or None, others)
        return
    modes = [True, False] if (both or rag is None) else [rag]
    names = [m.strip() for m in models.split(",") if m.strip()]
    with maybe_offline(offline or ws.config.chat.offline), progress_bar(not as_json) as progress:
        report = run_eval(ws, models=names, rag_modes=modes, questions=list(questions) or None, out_dir=out_dir,
                          backend=backend, limit=limit, progress=progress, judge=judge, forgetting=forgetting)
    prefs = summarize_marks(ws)
    if as_json:
        print_json({"out_dir": str(report.out_dir), "summary": report.summary,
                    "human_preference": prefs.to_dict() if prefs else None,
                    "forgetting_probe": {k: v for k, v in (report.probe or {}).items() if k != "rows"} or None})
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"raftsmith eval ({report.out_dir})")
    for head in table_header():
        table.add_column(head)
    for row in table_rows(report.summary):
        table.add_row(*row)
    Console().print(table)
    if prefs is not None:
        click.echo(prefs.line())
    click.echo(f"Report: {report.out_dir / 'report.html'}")
