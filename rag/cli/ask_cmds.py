"""``raftsmith ask``: one question, answered with citations (:mod:`rag.answer`)."""

from __future__ import annotations

import click

from rag.cli.common import (
    config_option,
    handle_errors,
    model_option,
    offline_option,
    print_json,
)
from rag.config import load_workspace


@click.command("ask")
@click.argument("question")
@model_option
@click.option("--no-rag", is_flag=True, help="Closed book: answer without the documents.")
@click.option("-k", "k", type=click.IntRange(1, 100), default=None, help="Chunks to retrieve (default: chat.top_k).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--stream/--no-stream", default=True, help="Print the reply as it is generated.")
@offline_option
@config_option
@handle_errors
def ask_cmd(question: str, model: str | None, backend: str | None, no_rag: bool, k: int | None,
            as_json: bool, stream: bool, offline: bool, config_path: str | None) -> None:
    """Answer QUESTION with numbered citations to the documents."""
    from rag.answer import answer
    from rag.chat import format_sources
    from rag.netguard import maybe_offline

    ws = load_workspace(config_path)
    live = stream and not as_json
    with maybe_offline(offline or ws.config.chat.offline):
        res = answer(ws, question, model=model, backend=backend, rag=not no_rag, k=k,
                     on_token=(lambda p: click.echo(p, nl=False)) if live else None)
    if as_json:
        print_json(res.to_json())
        return
    if not live:
        click.echo(res.raw)
    else:
        click.echo()
    lines = format_sources(res)
    if lines:
        click.secho("Sources:", bold=True)
        click.echo("\n".join(lines))
    click.secho(f"({res.model} via {res.backend}, {res.latency_ms / 1000:.1f} s)", dim=True)
