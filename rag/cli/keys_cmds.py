"""``raftsmith keys set|delete|list``: API keys in the OS keyring, never echoed."""

from __future__ import annotations

import sys

import click

from rag.cli.common import handle_errors, print_json


@click.group("keys")
def keys_group() -> None:
    """Store, delete or list API keys (OS keyring, service 'raftsmith')."""


@keys_group.command("set")
@click.argument("provider")
@handle_errors
def keys_set(provider: str) -> None:
    """Store the key for PROVIDER (hidden prompt; reads stdin when it is not a terminal)."""
    from rag.secrets import set_key

    if sys.stdin.isatty():
        value = click.prompt(f"API key for {provider}", hide_input=True, confirmation_prompt=False)
    else:
        value = sys.stdin.readline().strip()
    backend = set_key(provider, value)
    click.echo(f"Stored the key for '{provider}' in {backend}.")


@keys_group.command("delete")
@click.argument("provider")
@handle_errors
def keys_delete(provider: str) -> None:
    """Delete the stored key for PROVIDER."""
    from rag.secrets import delete_key

    if delete_key(provider):
        click.echo(f"Deleted the key for '{provider}'.")
    else:
        click.echo(f"No key stored for '{provider}'.")


@keys_group.command("list")
@click.argument("names", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@handle_errors
def keys_list(names: tuple[str, ...], as_json: bool) -> None:
    """Which providers have a key (keyring or env var); never the values."""
    from rag.secrets import KNOWN_NAMES, list_keys

    rows = list_keys(names or KNOWN_NAMES)
    if as_json:
        print_json(rows)
        return
    for r in rows:
        where = []
        if r["keyring"]:
            where.append("keyring")
        if r["env_set"]:
            where.append(f"${r['env_var']}")
        state = ", ".join(where) if where else ("keyring unavailable" if r["keyring"] is None else "no key")
        click.echo(f"{r['name']:<18} {state}")
