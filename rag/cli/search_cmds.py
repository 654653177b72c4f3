"""``raftsmith search``: the index, dense, BM25 or hybrid (:mod:`rag.retrieve`)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from rag.cli.common import config_option, handle_errors, print_json
from rag.config import load_workspace
from rag.errors import ConfigError


@click.command("search")
@click.argument("query", required=False)
@click.option("-k", "k", type=int, default=None, help="Number of chunks (default: chat.top_k).")
@click.option("--mode", type=click.Choice(["dense", "bm25", "hybrid"]), default=None,
              help="Ranking (default: chat.mode, normally hybrid).")
@click.option("--diverse", is_flag=True, help="At most two chunks per source document.")
@click.option("--queries-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="One query per line; prints one JSON list per line, in order.")
@click.option("--json", "as_json", is_flag=True, help="Print chunks as JSON.")
@config_option
@handle_errors
def search_cmd(query: str | None, k: int | None, mode: str | None, diverse: bool, queries_file: Path | None,
               as_json: bool, config_path: str | None) -> None:
    """Search the index with QUERY (or every line of --queries-file)."""
    from rag.retrieve import open_retriever

    ws = load_workspace(config_path)
    k = k or ws.config.chat.top_k
    mode = mode or ws.config.chat.mode
    if (query is None) == (queries_file is None):
        raise ConfigError("Give either a QUERY or --queries-file FILE (not both).")
    with open_retriever(ws) as retriever:
        if queries_file is not None:
            queries = [ln.strip() for ln in queries_file.read_text(encoding="utf-8").splitlines()]
            queries = [q for q in queries if q]
            results = retriever.search_many(queries, k=k, mode=mode, diverse=diverse)
            for chunks in results:
                if as_json:
                    print_json([c.to_dict() for c in chunks])
                else:
                    click.echo(" ".join(c.chunk_id[:12] for c in chunks))
            sys.stdout.flush()
            return
        assert query is not None
        chunks = retriever.search(query, k=k, mode=mode, diverse=diverse)
    if as_json:
        print_json([c.to_dict() for c in chunks])
        return
    from rich.console import Console
    from rich.panel import Panel

    console = Console()
    if not chunks:
        console.print("[yellow]No matching chunks.[/] Is the corpus ingested? Try --mode dense.")
    for rank, c in enumerate(chunks, start=1):
        title = f"{rank}. {c.location}  [dim]{c.heading}[/]  score={c.score:.4f}"
        body = c.text if len(c.text) <= 600 else c.text[:600] + " ..."
        console.print(Panel(body, title=title, title_align="left"))
