"""``raftsmith ui``: the local web page (:mod:`rag.ui`)."""

from __future__ import annotations

import click

from rag.cli.common import config_option, handle_errors, offline_option
from rag.config import load_workspace


@click.command("ui")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback unless --allow-remote).")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True)
@click.option("--allow-remote", is_flag=True,
              help="Allow a non-loopback --host; the page then asks for the bearer token (keyring raftsmith/serve-token, "
                   "created on first use, or $RAFTSMITH_SERVE_TOKEN).")
@click.option("--model", "-m", type=click.Choice(["base", "tuned"]), default="tuned", show_default=True,
              help="The model selected when the page opens.")
@click.option("--no-rag", is_flag=True, help="Start with retrieval off (closed book).")
@click.option("--max-tokens", type=click.IntRange(1, 8192), default=None, help="Reply length (default: chat.max_tokens).")
@click.option("--no-warm", is_flag=True, help="Do not load the embedder and model at start (they then load on the first question).")
@offline_option
@config_option
@handle_errors
def ui_cmd(host: str, port: int, allow_remote: bool, model: str, no_rag: bool, max_tokens: int | None, no_warm: bool,
           offline: bool, config_path: str | None) -> None:
    """A local web page: chat with sources, base/tuned switch, arena, status and the eval report."""
    from rag.netguard import maybe_offline
    from rag.ui.server import make_ui_server

    ws = load_workspace(config_path)
    server = make_ui_server(ws, host=host, port=port, allow_remote=allow_remote, model=model, rag=not no_rag,
                            max_tokens=max_tokens)
    click.echo(f"raftsmith ui on {server.url} (Ctrl-C stops).")
    try:
        with maybe_offline(offline or ws.config.chat.offline):
            if not no_warm:
                server.warm_up()
            server.serve_forever()
    except KeyboardInterrupt:
        click.echo("stopped")
