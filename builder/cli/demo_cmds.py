"""``raftsmith demo``: the offline CPU main job."""

from __future__ import annotations

import click

from rag.cli.common import handle_errors, print_json
from rag.cli.progress import progress_bar


@click.command("demo")
@click.option("--out", "out_dir", default="demo-out", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the home workspace, the bundle, the 'laptop' install and the reports (recreated).")
@click.option("--epochs", default=3.0, show_default=True, type=float, help="LoRA epochs on the sample data.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@handle_errors
def demo_cmd(out_dir: str, epochs: float, as_json: bool, quiet: bool) -> None:
    """Run the whole pipeline offline on the CPU over the Kestrel sample corpus.

    ingest -> RAFT data -> LoRA on SmolLM2-135M -> GGUF export -> bundle -> install into a
    second folder (the 'laptop') -> base vs tuned A/B evaluation, with and without RAG ->
    audit verification.
    """
    from builder.demo import print_summary, run_demo

    say = (lambda s: None) if as_json else click.echo
    with progress_bar(not (quiet or as_json)) as progress:
        result = run_demo(out_dir=out_dir, epochs=epochs, progress=progress, say=say)
    if as_json:
        print_json(result.to_dict())
    else:
        print_summary(result)
