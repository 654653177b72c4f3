"""``raftsmith chat``: the REPL with base/tuned switching (:mod:`rag.chat`)."""

from __future__ import annotations

import sys

import click

from rag.cli.common import (
    config_option,
    handle_errors,
    model_option,
    offline_option,
)
from rag.config import load_workspace


@click.command("chat")
@model_option
@click.option("--no-rag", is_flag=True, help="Start in closed-book mode (/rag on switches back).")
@click.option("-k", "k", type=click.IntRange(1, 100), default=None, help="Chunks to retrieve per turn.")
@offline_option
@config_option
@handle_errors
def chat_cmd(model: str | None, backend: str | None, no_rag: bool, k: int | None, offline: bool,
             config_path: str | None) -> None:
    """Interactive chat; /model base|tuned switches models, /sources shows where answers came from."""
    from rag.chat import ChatSession, run_repl

    ws = load_workspace(config_path)
    session = ChatSession(ws, model=model, backend=backend, rag=not no_rag, k=k)
    stdin = click.get_text_stream("stdin")  # type: ignore[operator]  # click 8.5 stubs

    def write(text: str) -> None:
        click.echo(text, nl=False)
        sys.stdout.flush()

    from rag.netguard import maybe_offline

    try:
        with maybe_offline(offline or ws.config.chat.offline):
            code = run_repl(session, stdin, write, interactive=stdin.isatty())
    finally:
        session.engine.close()
    if code:
        sys.exit(code)
