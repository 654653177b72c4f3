"""``raftsmith audit verify | checkpoint | new-log | show``: the hash-chained audit log (:mod:`rag.audit`)."""

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
@click.option("--checkpoint", "checkpoint_text", metavar="SEQ:HASH", default=None,
              help="A checkpoint printed earlier by 'raftsmith audit checkpoint': the log must still extend it.")
@click.option("--json", "as_json", is_flag=True)
@config_option
@handle_errors
def audit_verify_cmd(log: str | None, checkpoint_text: str | None, as_json: bool, config_path: str | None) -> None:
    """Check every record of LOG (default: the workspace's); exit 1 naming the first bad line."""
    from rag.audit import load_hmac_key, verify, verify_workspace
    from rag.audit_anchor import parse_checkpoint

    mark = parse_checkpoint(checkpoint_text) if checkpoint_text else None
    ws = None
    if log is None or config_path is not None:
        ws = load_workspace(config_path)
    else:
        try:
            ws = load_workspace(None)
        except Exception:  # noqa: BLE001 - verifying a loose file needs no workspace
            ws = None
    if ws is not None and (log is None or Path(log).resolve() == ws.audit_path.resolve()):
        res = verify_workspace(ws, checkpoint=mark)
    else:
        key = load_hmac_key(ws.config.audit.hmac_key_name) if ws is not None and config_path is not None else None
        res = verify(log or "", hmac_key=key, checkpoint=mark)
    if as_json:
        print_json(res.to_dict())
    else:
        click.secho(str(res), fg="green" if res.ok else "red", err=not res.ok)
    if not res.ok:
        sys.exit(1)


@audit_group.command("checkpoint")
@click.option("--json", "as_json", is_flag=True)
@config_option
@handle_errors
def audit_checkpoint_cmd(as_json: bool, config_path: str | None) -> None:
    """Print SEQ:HASH of the last record (after a full verify) for you to keep off this machine."""
    from rag.audit import checkpoint

    ws = load_workspace(config_path)
    point = checkpoint(ws)
    if as_json:
        print_json({"seq": point.seq, "hash": point.hash, "checkpoint": str(point), "path": str(ws.audit_path)})
        return
    click.echo(str(point))
    click.echo("Keep this line where this machine's users cannot change it; later, "
               f"'raftsmith audit verify --checkpoint {point}' checks that the log still extends it.", err=True)


@audit_group.command("new-log")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@config_option
@handle_errors
def audit_new_log_cmd(yes: bool, config_path: str | None) -> None:
    """Move the log and its head aside unchanged and start a new log whose first record names them."""
    from rag.audit import AuditLog

    ws = load_workspace(config_path)
    if not yes:
        click.confirm(f"Move {ws.audit_path} aside and start a new audit log?", abort=True)
    archive, record = AuditLog.for_workspace(ws).start_new_log()
    click.echo(f"Old log kept, unchanged, as {archive}; new log started at {ws.audit_path} "
               f"(seq {record['seq']} names the old one).")


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
