"""``raftsmith init``."""

from __future__ import annotations

import click

from rag.cli.common import handle_errors
from rag.config import init_workspace


@click.command("init")
@click.argument("directory", default=".", type=click.Path(file_okay=False, path_type=str))
@click.option("--name", "corpus_name", default="corpus", show_default=True, help="Corpus name (used for data and exports).")
@click.option("--force", is_flag=True, help="Overwrite an existing raftsmith.yaml.")
@handle_errors
def init_cmd(directory: str, corpus_name: str, force: bool) -> None:
    """Create a workspace in DIRECTORY: raftsmith.yaml, docs/, domain_questions/, ..."""
    ws = init_workspace(directory, corpus_name=corpus_name, force=force)
    click.echo(f"Workspace ready at {ws.root}")
    click.echo(f"Put documents in {ws.root / 'docs'} and run: raftsmith ingest --config {ws.config_path}")
