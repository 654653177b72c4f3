"""``raftsmith bundle create | verify | install``: thin shims over :mod:`rag.bundle`."""

from __future__ import annotations

from typing import Any

import click

from rag.cli.common import config_option, handle_errors, print_json
from rag.cli.progress import progress_bar


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _summary(title: str, rows: list[tuple[str, str]], warnings: list[str] | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for k, v in rows:
        table.add_row(k, v)
    console = Console()
    console.print(table)
    for w in warnings or []:
        console.print(f"[yellow]warning:[/yellow] {w}")


def _origin(signed_by: str | None, expect_digest: str | None) -> str:
    if signed_by:
        return f"signature verified with key '{signed_by}'"
    if expect_digest:
        return "digest matches the one given"
    return "not checked (integrity only: pass --expect-digest or --check-signature)"


@click.group("bundle")
def bundle_group() -> None:
    """Create, verify or install an offline bundle (export + index + embedding model + config)."""


@bundle_group.command("create")
@click.argument("out", type=click.Path(dir_okay=False, path_type=str))
@click.option("--no-embedding-model", is_flag=True, help="Leave the embedding model out (the laptop must already have it).")
@click.option("--export", "export_name", default=None, help="Export to bundle (default: the newest in gguf/).")
@click.option("--allow-secret", "allow_secrets", multiple=True, metavar="NAME",
              help="Let a secret-scan finding travel anyway: a key shape (e.g. aws-key) or the env var / "
                   "keyring name of a live key. Repeatable.")
@click.option("--sign", "sign", default=None, metavar="KEYNAME",
              help="HMAC-sign the bundle's digest with this keyring key into OUT.sig.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@config_option
@handle_errors
def create_cmd(out: str, no_embedding_model: bool, export_name: str | None, allow_secrets: tuple[str, ...],
               sign: str | None, as_json: bool, config_path: str | None) -> None:
    """Pack the workspace's answering half into OUT (.tar or .tar.gz)."""
    from rag.bundle import create_bundle
    from rag.config import load_workspace

    ws = load_workspace(config_path)
    with progress_bar(not as_json, unit="bytes") as progress:
        report = create_bundle(ws, out, include_embedding_model=not no_embedding_model,
                               export_name=export_name, progress=progress,
                               allow_secrets=allow_secrets, sign=sign)
    if as_json:
        print_json(report.to_dict())
        return
    _summary(
        f"Bundle written: {report.path}",
        [
            ("members", str(report.members + 1)),
            ("payload", _size(report.total_bytes)),
            ("bundle size", _size(report.bundle_bytes)),
            ("export", report.export_name or "(none)"),
            ("embedding model", "included" if report.embedding_included else "not included"),
            ("sha256", report.sha256),
            ("signature", report.signature or "(unsigned: proves integrity, not origin)"),
            ("seconds", f"{report.seconds:.1f}"),
        ],
        report.warnings,
    )
    click.echo(f"Check it on the laptop with: raftsmith bundle verify {report.path} --expect-digest sha256:{report.sha256}")


def provenance_options(f: Any) -> Any:
    f = click.option("--signature", "signature", default=None, type=click.Path(dir_okay=False, path_type=str),
                     help="The .sig file for --check-signature (default: FILE.sig).")(f)
    f = click.option("--check-signature", "check_signature", default=None, metavar="KEYNAME",
                     help="Require a valid HMAC signature under this keyring key (made by 'create --sign').")(f)
    return click.option("--expect-digest", "expect_digest", default=None, metavar="SHA256",
                        help="Refuse the bundle unless its sha256 is this (printed by 'bundle create').")(f)


@bundle_group.command("verify")
@click.argument("file", type=click.Path(dir_okay=False, path_type=str))
@provenance_options
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@handle_errors
def verify_cmd(file: str, expect_digest: str | None, check_signature: str | None, signature: str | None,
               as_json: bool) -> None:
    """Check every member of FILE against the bundle manifest (sizes, sha256, safe names)."""
    from rag.bundle import verify_bundle

    with progress_bar(not as_json, unit="bytes") as progress:
        report = verify_bundle(file, progress=progress, expect_digest=expect_digest,
                               check_signature=check_signature, signature=signature)
    if as_json:
        print_json({"ok": True, **report.to_dict()})
        return
    _summary(
        f"Bundle OK: {report.path}",
        [
            ("members", str(report.members + 1)),
            ("payload", _size(report.total_bytes)),
            ("export", report.export_name or "(none)"),
            ("created", report.created_at),
            ("raftsmith", report.raftsmith_version),
            ("sha256", report.sha256),
            ("origin", _origin(report.signed_by, expect_digest)),
            ("seconds", f"{report.seconds:.1f}"),
        ],
    )


@bundle_group.command("install")
@click.argument("file", type=click.Path(dir_okay=False, path_type=str))
@click.option("--dest", required=True, type=click.Path(file_okay=False, path_type=str), help="New or empty folder for the workspace.")
@click.option("--register", is_flag=True, help="Also create the models in Ollama.")
@click.option("--host", default=None, help="Ollama URL for --register (default: $OLLAMA_HOST or http://127.0.0.1:11434).")
@provenance_options
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@handle_errors
def install_cmd(file: str, dest: str, register: bool, host: str | None, expect_digest: str | None,
                check_signature: str | None, signature: str | None, as_json: bool) -> None:
    """Verify FILE and install it as a workspace in DEST, set up for the llama-cpp backend."""
    from rag.bundle import install_bundle

    with progress_bar(not as_json, unit="bytes") as progress:
        report = install_bundle(file, dest, register=register, host=host, progress=progress,
                                expect_digest=expect_digest, check_signature=check_signature, signature=signature)
    if as_json:
        print_json(report.to_dict())
        return
    _summary(
        f"Bundle installed: {report.dest}",
        [
            ("members", str(report.members + 1)),
            ("payload", _size(report.total_bytes)),
            ("export", report.export_name or "(none)"),
            ("config", report.config_path),
            ("registered in Ollama", ", ".join(report.registered) or "-"),
            ("sha256", report.sha256),
            ("origin", _origin(report.signed_by, expect_digest)),
            ("seconds", f"{report.seconds:.1f}"),
        ],
        report.warnings,
    )
    click.echo(f"Try: raftsmith ask 'your question' --config {report.config_path}")
