"""``raftsmith register [list | remove NAME]``: exports into Ollama (:mod:`rag.register`)."""

from __future__ import annotations

import click

from rag.cli.common import (
    config_option,
    handle_errors,
    print_json,
)
from rag.config import load_workspace


@click.group("register", invoke_without_command=True)
@click.option("--host", default=None, help="Ollama URL (default: ollama.host, $OLLAMA_HOST, http://127.0.0.1:11434).")
@click.option("--adapter", is_flag=True, help="Build the tuned model from the base in Ollama + the LoRA adapter.")
@click.option("--replace", is_flag=True, help="Overwrite a model of the same name with different content.")
@click.option("--export", "export_name", default=None, help="Export to register (default: the newest in gguf/).")
@click.option("--list", "list_", is_flag=True, hidden=True, help="Same as 'raftsmith register list'.")
@click.option("--remove", "remove_name", default=None, metavar="NAME", hidden=True,
              help="Same as 'raftsmith register remove NAME'.")
@click.option("--json", "as_json", is_flag=True)
@config_option
@click.pass_context
@handle_errors
def register_group(ctx: click.Context, host: str | None, adapter: bool, replace: bool, export_name: str | None,
                   list_: bool, remove_name: str | None, as_json: bool, config_path: str | None) -> None:
    """Register the exported models with Ollama (idempotent by digest); 'list' and 'remove' manage them."""
    if ctx.invoked_subcommand is not None:
        ctx.obj = {"host": host, "as_json": as_json, "config_path": config_path}
        return
    if list_:
        _list(host, as_json, config_path)
        return
    if remove_name:
        _remove(remove_name, host, config_path)
        return
    from rag.register import register

    ws = load_workspace(config_path)
    report = register(ws, host=host, adapter=adapter, replace=replace, export_name=export_name)
    if as_json:
        print_json(report.to_dict())
        return
    for m in report.models:
        click.echo(f"{m.action:<9} {m.name} ({m.role}, {m.mode})" + (f", uploaded {len(m.uploaded)} blob(s)" if m.uploaded else ""))
    click.echo(f"Ollama at {report.host}: try 'raftsmith ask --backend ollama --model tuned \"...\"'")


def _shared(ctx: click.Context, host: str | None, as_json: bool, config_path: str | None) -> tuple[str | None, bool, str | None]:
    """Options given before the subcommand ('register --host URL list') count too."""
    given = ctx.obj or {}
    return host or given.get("host"), as_json or bool(given.get("as_json")), config_path or given.get("config_path")


@register_group.command("list")
@click.option("--host", default=None, help="Ollama URL (default: ollama.host, $OLLAMA_HOST, http://127.0.0.1:11434).")
@click.option("--json", "as_json", is_flag=True)
@config_option
@click.pass_context
@handle_errors
def register_list_cmd(ctx: click.Context, host: str | None, as_json: bool, config_path: str | None) -> None:
    """List the models raftsmith registered at this host (and whether each is still there)."""
    _list(*_shared(ctx, host, as_json, config_path))


@register_group.command("remove")
@click.argument("name")
@click.option("--host", default=None, help="Ollama URL (default: ollama.host, $OLLAMA_HOST, http://127.0.0.1:11434).")
@config_option
@click.pass_context
@handle_errors
def register_remove_cmd(ctx: click.Context, name: str, host: str | None, config_path: str | None) -> None:
    """Delete NAME from Ollama; only models raftsmith registered can be removed."""
    host, _, config_path = _shared(ctx, host, False, config_path)
    _remove(name, host, config_path)


def _list(host: str | None, as_json: bool, config_path: str | None) -> None:
    from rag.register import list_registered

    rows = list_registered(load_workspace(config_path), host)
    if as_json:
        print_json(rows)
        return
    if not rows:
        click.echo("raftsmith has registered no models at this host.")
    for r in rows:
        click.echo(f"{r['name']:<32} {r['role']:<6} {r['mode']:<8} {'present' if r['present'] else 'MISSING':<8} export {r['export']}")


def _remove(name: str, host: str | None, config_path: str | None) -> None:
    from rag.register import remove

    remove(load_workspace(config_path), name, host)
    click.echo(f"removed {name}")
