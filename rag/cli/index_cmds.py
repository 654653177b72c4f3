"""``raftsmith index stats``: what the index holds and takes (:mod:`rag.index.stats`)."""

from __future__ import annotations

import click

from rag.cli.common import config_option, handle_errors, print_json
from rag.config import load_workspace


@click.group("index")
def index_group() -> None:
    """Look at the index."""


@index_group.command("stats")
@click.option("--no-ram", is_flag=True, help="Skip loading the FAISS index to measure its RAM.")
@click.option("--json", "as_json", is_flag=True)
@config_option
@handle_errors
def index_stats_cmd(no_ram: bool, as_json: bool, config_path: str | None) -> None:
    """Chunks, documents, vector storage, FAISS kind and search settings, sizes on disk, and the
    RAM the FAISS index takes when loaded for queries."""
    from rag.index.stats import describe, index_stats

    ws = load_workspace(config_path)
    stats = index_stats(ws.index_dir, measure_ram=not no_ram)
    if as_json:
        print_json(stats)
        return
    for line in describe(stats):
        click.echo(line)
