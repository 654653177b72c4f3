"""``raftsmith export``: a thin shim over :func:`builder.export.run.run_export`."""

from __future__ import annotations

import click

from builder.cli.train_cmds import summary_table
from rag.cli.common import config_option, handle_errors, print_json
from rag.cli.progress import progress_bar
from rag.config import load_workspace


@click.command("export")
@click.option("--quant", "quants", multiple=True, help="Quantization (repeatable): q4_k_m, q5_k_m, q8_0, f16 (default: export.quantizations).")
@click.option("--adapter/--no-adapter", default=None, help="Also write the LoRA adapter GGUF (default: export.adapter).")
@click.option("--name", default=None, help="Export folder name under gguf/ (default: <corpus>-<family>).")
@click.option("--run", "run_dir", type=click.Path(file_okay=False, path_type=str), default=None,
              help="Training run folder (default: the newest finished run).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--quiet", is_flag=True, help="No progress output.")
@config_option
@handle_errors
def export_cmd(quants: tuple[str, ...], adapter: bool | None, name: str | None, run_dir: str | None,
               as_json: bool, quiet: bool, config_path: str | None) -> None:
    """Merge, convert to GGUF with llama.cpp, quantize, write Modelfiles, verify, manifest."""
    from builder.export.run import run_export

    ws = load_workspace(config_path)
    with progress_bar(not (as_json or quiet)) as progress:
        res = run_export(ws, run_dir=run_dir, quantizations=list(quants) or None, adapter=adapter, name=name,
                         progress=progress)
    if as_json:
        print_json(res.to_dict())
        return
    rows = [(f["path"], f"{f['role']}  {f['quantization'] or ''}  {f['size'] / 1e6:.1f} MB") for f in res.files]
    rows += [(f"verify {v.path}{' + ' + v.adapter if v.adapter else ''}", f"{'ok' if v.ok else 'FAIL'}: {v.text[:60]!r}")
             for v in res.verification]
    summary_table(f"export: {res.export_dir}", rows)
    click.echo(f"Next: raftsmith register   (or: ollama create NAME -f {res.export_dir / 'Modelfile'})")
