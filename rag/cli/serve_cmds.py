"""``raftsmith serve``: the OpenAI-compatible RAG endpoint (:mod:`rag.serve`)."""

from __future__ import annotations

import click

from rag.cli.common import (
    config_option,
    handle_errors,
    offline_option,
)
from rag.config import load_workspace


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Only loopback (127.0.0.1, ::1, localhost) unless --allow-remote; "
                   "an empty or unknown host counts as remote.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--allow-remote", is_flag=True,
              help="Allow a non-loopback --host. Every request then needs the bearer token "
                   "(keyring raftsmith/serve-token, or $RAFTSMITH_SERVE_TOKEN).")
@offline_option
@config_option
@handle_errors
def serve_cmd(host: str, port: int, allow_remote: bool, offline: bool, config_path: str | None) -> None:
    """OpenAI-compatible RAG endpoint: /v1/models and /v1/chat/completions (streaming too)."""
    from rag.netguard import maybe_offline
    from rag.serve import MODELS, make_server

    ws = load_workspace(config_path)
    server = make_server(ws, host=host, port=port, allow_remote=allow_remote)
    click.echo(f"Serving {server.url} (models: {', '.join(MODELS)}). Ctrl-C stops.")
    if server.policy.require_token:
        click.echo("Clients must send 'Authorization: Bearer <token>': the token is in the keyring "
                   "(python -m keyring get raftsmith serve-token) or in $RAFTSMITH_SERVE_TOKEN.")
    elif server.policy.token:
        click.echo("Loopback: no bearer token needed (serve.require_token: true asks for it here too).")
    try:
        with maybe_offline(offline or ws.config.chat.offline):
            server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        click.echo("stopped")
        server.server_close()
        server.engine.close()
