"""``raftsmith ingest``: documents and llms.txt sites into the index (:mod:`rag.ingest`)."""

from __future__ import annotations

import click

from rag.cli.common import config_option, handle_errors, print_json
from rag.cli.progress import progress_bar
from rag.config import load_workspace


@click.command("ingest")
@click.argument("paths", nargs=-1)
@click.option("--prune", is_flag=True, help="Drop documents whose files are gone from disk.")
@click.option("--rebuild", is_flag=True,
              help="Rebuild the whole index from the documents (after an upgrade that changed its format).")
@click.option("--ray", "ray_address", metavar="ADDRESS", default=None,
              help="Read, chunk and embed on a Ray cluster (pip install 'raftsmith[ray]'): host:6379, "
                   "ray://host:10001, 'auto' on a node of it, or 'local' to start one here. Every node needs "
                   "raftsmith and the corpus and workspace at the same paths.")
@click.option("--ray-workers", type=click.IntRange(min=1), default=None,
              help="Worker actors, one CPU each (default: every CPU of the cluster).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar, no table.")
@config_option
@handle_errors
def ingest_cmd(paths: tuple[str, ...], prune: bool, rebuild: bool, ray_address: str | None,
               ray_workers: int | None, as_json: bool, quiet: bool, config_path: str | None) -> None:
    """Ingest files, folders or llms.txt URLs (default: corpus.paths) into the index.

    Committed in batches of corpus.commit_every chunks: after a stop (a kill, a crash), run it
    again and it goes on from the last committed batch."""
    from rag.ingest.pipeline import ingest

    ws = load_workspace(config_path)
    if ray_workers is not None and not ray_address:
        raise click.UsageError("--ray-workers goes with --ray ADDRESS.")
    with progress_bar(not (as_json or quiet)) as progress:
        report = ingest(ws, list(paths) or None, prune=prune, progress=progress, rebuild=rebuild,
                        ray_address=ray_address, ray_workers=ray_workers)
    if as_json:
        print_json(report.to_dict())
        return
    if quiet:
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    problems = [f for f in report.files if f.status != "ok"]
    if problems:
        t = Table(title="Files not indexed", show_lines=False)
        t.add_column("source", overflow="fold")
        t.add_column("status")
        t.add_column("reason", overflow="fold")
        for f in problems:
            t.add_row(f.source, f"[{'red' if f.status == 'error' else 'yellow'}]{f.status}", f.reason or "")
        console.print(t)
    counts = report.counts()
    actions: dict[str, int] = {}
    for f in report.files:
        if f.status == "ok" and f.action:
            actions[f.action] = actions.get(f.action, 0) + 1
    summary = Table(title="Ingest summary", show_header=False)
    summary.add_column("what")
    summary.add_column("value", justify="right")
    rows = [
        ("files ok / skipped / error", f"{counts['ok']} / {counts['skipped']} / {counts['error']}"),
        ("added / updated / unchanged / removed",
         " / ".join(str(actions.get(a, 0)) for a in ("added", "updated", "unchanged", "removed"))),
        ("chunks added / removed", f"{report.chunks_added} / {report.chunks_removed}"),
        ("embeddings computed", str(report.embeddings_computed)),
        ("chunks in index", f"{report.total_chunks} from {report.total_documents} documents"),
        ("seconds", f"{report.seconds:.1f}"),
        ("index", report.index_dir),
    ]
    if report.resumed:
        rows.insert(0, ("resumed", "went on from an ingest that stopped before it finished"))
    for what, value in rows:
        summary.add_row(what, value)
    console.print(summary)
