"""``raftsmith generate``: RAFT training data from question files and/or synthesized questions."""

from __future__ import annotations

import click

from rag.cli.common import config_option, handle_errors, print_json
from rag.cli.progress import progress_bar
from rag.config import load_workspace
from rag.providers import TEACHER_CHOICES


@click.command("generate")
@click.option("--questions", "questions", multiple=True, type=click.Path(path_type=str),
              help="Question YAML file or folder (repeatable; default: raft.questions).")
@click.option("--synthesize", type=click.IntRange(min=0), default=None,
              help="With a teacher: list every chunk's atomic facts and write this many questions per fact "
                   "(default: raft.synthesize_per_chunk; at most raft.synthesize_max_facts facts per chunk).")
@click.option("--teacher", type=click.Choice(TEACHER_CHOICES), default=None,
              help="Teacher provider; 'none' uses the reference answers in the question files (no network).")
@click.option("--model", default=None, help="Teacher model (default: teacher.model).")
@click.option("--base-url", default=None, help="Teacher base URL, e.g. http://127.0.0.1:8080/v1.")
@click.option("--concurrency", type=click.IntRange(min=1, max=256), default=None, help="Requests in flight.")
@click.option("--local-only", is_flag=True, default=None, help="Refuse any teacher that is not on loopback.")
@click.option("--dry-run", is_flag=True, help="Plan and estimate tokens and cost; call nothing, write nothing.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Plan at most N questions (each training one also brings its closed-book row).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@config_option
@handle_errors
def generate_cmd(
    questions: tuple[str, ...], synthesize: int | None, teacher: str | None, model: str | None,
    base_url: str | None, concurrency: int | None, local_only: bool | None, dry_run: bool,
    limit: int | None, as_json: bool, quiet: bool, config_path: str | None,
) -> None:
    """Generate RAFT rows into training_data/<corpus>.{train,eval}.jsonl (resumable)."""
    from builder.generate.engine import run_generate

    ws = load_workspace(config_path)
    with progress_bar(not (as_json or quiet)) as progress:
        summary = run_generate(
            ws, questions=list(questions) or None, synthesize=synthesize, teacher=teacher, dry_run=dry_run,
            local_only=local_only, limit=limit, progress=progress, model=model, base_url=base_url,
            concurrency=concurrency,
        )
    if as_json:
        print_json(summary.to_dict())
        return
    _print_summary(summary)


def _print_summary(s: object) -> None:
    from rich.console import Console
    from rich.table import Table

    d = s.to_dict()  # type: ignore[attr-defined]
    con = Console()
    t = Table(title=f"generate: {d['corpus']} ({d['provider']}/{d['model']})", show_header=False)
    if d["dry_run"]:
        t.add_row("planned rows", f"{d['estimated_rows'] or d['planned']} ({d['planned']} from question files)")
        t.add_row("estimated tokens", f"{d['estimated_prompt_tokens']:,} in / {d['estimated_completion_tokens']:,} out")
        t.add_row("estimated cost", f"${d['estimated_cost_usd']:.4f}")
    else:
        t.add_row("rows", f"train {d['train_rows']}  eval {d['eval_rows']}  (new {d['new_rows']}, kept from before {d['resumed_rows']})")
        t.add_row("row kinds", f"closed book {d['closed_book_rows']}  refusal {d['refusal_rows']}  "
                  f"(RAFT rows are the rest)")
        sp = d.get("split") or {}
        if sp:
            hint = "" if sp.get("facts_with_eval_phrasing") or sp["eval_split"] != "phrasings" else (
                "  (no fact has a second phrasing to hold out: add paraphrases: to your items, or a holdout file)")
            t.add_row("eval split", f"{sp['eval_split']}: {sp['facts_trained']}/{sp['facts']} facts trained, "
                      f"{sp['facts_with_eval_phrasing']} with a held-out phrasing, {sp['facts_withheld']} withheld{hint}")
        cov = d.get("synth_coverage") or {}
        if cov:
            fpc = cov["facts_per_chunk"]
            t.add_row("synthesized facts", f"{cov['facts']} facts ({cov['phrasings']} phrasings) from "
                      f"{cov['chunks_with_facts']}/{cov['chunks']} chunks; per chunk mean {fpc['mean']}, min "
                      f"{fpc['min']}, max {fpc['max']}; {cov['chunks_without_facts']} chunks gave none "
                      f"({cov['teacher_failed']} teacher failures; --json lists them)")
        t.add_row("quotes verified", str(d["quotes_verified_rows"]))
        t.add_row("teacher calls", f"{d['calls']} (cache hits {d['cache_hits']}, retries {d['retries']})")
        t.add_row("tokens", f"{d['prompt_tokens']:,} in / {d['completion_tokens']:,} out")
        t.add_row("cost", f"${d['cost_usd']:.4f}")
        dec = d.get("decontamination") or {}
        if dec:
            t.add_row(
                "decontamination",
                f"shared oracle chunks {dec.get('shared_oracle_chunks')}, exact overlaps {dec.get('exact_question_overlap')}, "
                f"max cosine {dec.get('max_cosine')}",
            )
        if d["redactions"]:
            t.add_row("redacted", ", ".join(f"{k} {v}" for k, v in sorted(d["redactions"].items())))
        for k, v in d["files"].items():
            t.add_row(f"{k} file", v)
    if d["dropped"]:
        t.add_row("dropped", ", ".join(f"{k} {v}" for k, v in sorted(d["dropped"].items())))
    if d["stopped"]:
        t.add_row("stopped", d["stopped"])
    con.print(t)
