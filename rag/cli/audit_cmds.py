"""``raftsmith audit verify | show``: the hash-chained audit log (:mod:`rag.audit`)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from rag.cli.common import (
    config_option,
    handle_errors,
    print_json,
)
from rag.config import load_workspace


@click.group("audit")
def audit_group() -> None:
    """Verify or show the hash-chained audit log."""


@audit_group.command("verify")
@click.argument("log", required=False, type=click.Path(dir_okay=False, path_type=str))
@click.option("--json", "as_json", is_flag=True)
@config_option
@handle_errors
def audit_verify_cmd(log: str | None, as_json: bool, config_path: str | None) -> None:
    """Check every record of LOG (default: the workspace's); exit 1 naming the first bad line."""
    from rag.audit import load_hmac_key, verify

    key = None
    if log is None or config_path is not None:
        ws = load_workspace(config_path)
        log = log or str(ws.audit_path)
        key = load_hmac_key(ws.config.audit.hmac_key_name)
    else:
        try:
            ws = load_workspace(None)
            if Path(log).resolve() == ws.audit_path.resolve():
                key = load_hmac_key(ws.config.audit.hmac_key_name)
        except Exception:  # noqa: BLE001 - verifying a loose file needs no workspace
            key = None
    res = verify(log, hmac_key=key)
    if as_json:
        print_json(res.to_dict())
    else:
        click.secho(str(res), fg="green" if res.ok else "red", err=not res.ok)
    if not res.ok:
        sys.exit(1)


@audit_group.command("show")
@click.option("--tail", "n", type=int, default=20, show_default=True, help="Show the last N records (0 = all).")
@click.option("--json", "as_json", is_flag=True, help="One JSON record per line.")
@config_option
@handle_errors
def audit_show_cmd(n: int, as_json: bool, config_path: str | None) -> None:
    """Show the last records of the audit log."""
    import json

    from rag.audit import tail

    ws = load_workspace(config_path)
    for rec in tail(ws.audit_path, n):
        if as_json:
            click.echo(json.dumps(rec, ensure_ascii=False))
            continue
        model = (rec.get("model") or {}).get("name", "") if isinstance(rec.get("model"), dict) else ""
        query = str(rec.get("query") or "")
        click.echo(f"{rec.get('seq', '?'):>5} {rec.get('ts', '')} {rec.get('event', ''):<13} {rec.get('outcome', ''):<10} "
                   f"{model:<28} {query[:60]}")
