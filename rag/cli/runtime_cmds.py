"""Laptop runtime commands: ask, chat, eval, serve, register, audit."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from rag.cli.common import config_option, handle_errors, print_json
from rag.config import load_workspace

BACKENDS = click.Choice(["llama-cpp", "ollama", "openai"])


def _model_option(f: Any) -> Any:
    f = click.option("--backend", type=BACKENDS, default=None, help="Chat backend (default: chat.backend).")(f)
    return click.option("--model", "-m", default=None,
                        help="base | tuned | tuned-adapter | an export name | a .gguf path (default: chat.model).")(f)


def _offline_option(f: Any) -> Any:
    return click.option("--offline", is_flag=True,
                        help="Refuse every non-loopback connection (also on with chat.offline: true).")(f)


@click.command("ask")
@click.argument("question")
@_model_option
@click.option("--no-rag", is_flag=True, help="Closed book: answer without the documents.")
@click.option("-k", "k", type=click.IntRange(1, 100), default=None, help="Chunks to retrieve (default: chat.top_k).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--stream/--no-stream", default=True, help="Print the reply as it is generated.")
@_offline_option
@config_option
@handle_errors
def ask_cmd(question: str, model: str | None, backend: str | None, no_rag: bool, k: int | None,
            as_json: bool, stream: bool, offline: bool, config_path: str | None) -> None:
    """Answer QUESTION with numbered citations to the documents."""
    from rag.answer import answer
    from rag.chat import format_sources
    from rag.netguard import maybe_offline

    ws = load_workspace(config_path)
    live = stream and not as_json
    with maybe_offline(offline or ws.config.chat.offline):
        res = answer(ws, question, model=model, backend=backend, rag=not no_rag, k=k,
                     on_token=(lambda p: click.echo(p, nl=False)) if live else None)
    if as_json:
        print_json(res.to_json())
        return
    if not live:
        click.echo(res.raw)
    else:
        click.echo()
    lines = format_sources(res)
    if lines:
        click.secho("Sources:", bold=True)
        click.echo("\n".join(lines))
    click.secho(f"({res.model} via {res.backend}, {res.latency_ms / 1000:.1f} s)", dim=True)


@click.command("chat")
@_model_option
@click.option("--no-rag", is_flag=True, help="Start in closed-book mode (/rag on switches back).")
@click.option("-k", "k", type=click.IntRange(1, 100), default=None, help="Chunks to retrieve per turn.")
@_offline_option
@config_option
@handle_errors
def chat_cmd(model: str | None, backend: str | None, no_rag: bool, k: int | None, offline: bool,
             config_path: str | None) -> None:
    """Interactive chat; /model base|tuned switches models, /sources shows where answers came from."""
    from rag.chat import ChatSession, run_repl

    ws = load_workspace(config_path)
    session = ChatSession(ws, model=model, backend=backend, rag=not no_rag, k=k)
    stdin = click.get_text_stream("stdin")  # type: ignore[operator]  # click 8.5 stubs

    def write(text: str) -> None:
        click.echo(text, nl=False)
        sys.stdout.flush()

    from rag.netguard import maybe_offline

    try:
        with maybe_offline(offline or ws.config.chat.offline):
            code = run_repl(session, stdin, write, interactive=stdin.isatty())
    finally:
        session.engine.close()
    if code:
        sys.exit(code)


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


@click.command("register")
@click.option("--host", default=None, help="Ollama URL (default: ollama.host, $OLLAMA_HOST, http://127.0.0.1:11434).")
@click.option("--adapter", is_flag=True, help="Build the tuned model from the base in Ollama + the LoRA adapter.")
@click.option("--replace", is_flag=True, help="Overwrite a model of the same name with different content.")
@click.option("--export", "export_name", default=None, help="Export to register (default: the newest in gguf/).")
@click.option("--list", "list_", is_flag=True, help="List the models raftsmith registered.")
@click.option("--remove", "remove_name", default=None, metavar="NAME", help="Delete a model raftsmith registered.")
@click.option("--json", "as_json", is_flag=True)
@config_option
@handle_errors
def register_cmd(host: str | None, adapter: bool, replace: bool, export_name: str | None, list_: bool,
                 remove_name: str | None, as_json: bool, config_path: str | None) -> None:
    """Register the exported models with Ollama (idempotent by digest)."""
    from rag import register as ollama_api

    ws = load_workspace(config_path)
    if list_:
        rows = ollama_api.list_registered(ws, host)
        if as_json:
            print_json(rows)
        elif not rows:
            click.echo("raftsmith has registered no models at this host.")
        for r in rows if not as_json else []:
            click.echo(f"{r['name']:<32} {r['role']:<6} {r['mode']:<8} {'present' if r['present'] else 'MISSING':<8} export {r['export']}")
        return
    if remove_name:
        ollama_api.remove(ws, remove_name, host)
        click.echo(f"removed {remove_name}")
        return
    report = ollama_api.register(ws, host=host, adapter=adapter, replace=replace, export_name=export_name)
    if as_json:
        print_json(report.to_dict())
        return
    for m in report.models:
        click.echo(f"{m.action:<9} {m.name} ({m.role}, {m.mode})" + (f", uploaded {len(m.uploaded)} blob(s)" if m.uploaded else ""))
    click.echo(f"Ollama at {report.host}: try 'raftsmith ask --backend ollama --model tuned \"...\"'")


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback unless --allow-remote).")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--allow-remote", is_flag=True, help="Allow a non-loopback --host (no authentication!).")
@_offline_option
@config_option
@handle_errors
def serve_cmd(host: str, port: int, allow_remote: bool, offline: bool, config_path: str | None) -> None:
    """OpenAI-compatible RAG endpoint: /v1/models and /v1/chat/completions (streaming too)."""
    from rag.netguard import maybe_offline
    from rag.serve import make_server

    ws = load_workspace(config_path)
    server = make_server(ws, host=host, port=port, allow_remote=allow_remote)
    click.echo(f"Serving {server.url} (models: tuned, base, tuned-no-rag, base-no-rag). Ctrl-C stops.")
    try:
        with maybe_offline(offline or ws.config.chat.offline):
            server.serve_forever()
    except KeyboardInterrupt:
        click.echo("stopped")
    finally:
        server.server_close()
        server.engine.close()


def _retrieval_report(ws: Any, questions: list[str] | None, limit: int | None, k: int | None, as_json: bool) -> None:
    from rag.evaluate import load_items, retrieval_recall

    rep = retrieval_recall(ws, load_items(ws, questions, limit), k=k)
    if as_json:
        print_json(rep)
        return
    click.echo(f"Retrieval recall@{rep['k']} over {rep['questions']} answerable questions (chat.mode is "
               f"{ws.config.chat.mode}):")
    for mode, value in rep["recall"].items():
        click.echo(f"  {mode:<7} {value:.2f}{'  <- best' if mode == rep['best'] else ''}")
    if rep["best"] != ws.config.chat.mode:
        click.echo(f"Set chat.mode: {rep['best']} in raftsmith.yaml to use the best mode for these questions.")


@click.command("eval")
@click.option("--models", default="base,tuned", show_default=True, help="Comma-separated: base, tuned, export names.")
@click.option("--rag/--no-rag", "rag", default=None, help="Only with (or only without) retrieval; default: both.")
@click.option("--both", is_flag=True, help="Both RAG and closed book (the default).")
@click.option("--questions", "questions", multiple=True, type=click.Path(path_type=str),
              help="Question YAML, eval JSONL or a folder of them (repeatable; default: the eval split + "
                   "holdout YAML files).")
@click.option("--backend", type=BACKENDS, default=None, help="Chat backend (default: chat.backend).")
@click.option("--limit", type=click.IntRange(1), default=None, help="Only the first N questions.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=str), default=None,
              help="Report folder (default: .raftsmith/eval/<timestamp>).")
@click.option("--judge", is_flag=True, help="Also grade answers with the teacher LLM (needs teacher.* configured and online).")
@click.option("--retrieval", "retrieval_only", is_flag=True,
              help="Only measure retrieval: recall@k of dense, bm25 and hybrid on the questions (no model runs).")
@click.option("--k", "k", type=click.IntRange(1, 100), default=None, help="k for --retrieval (default: chat.top_k).")
@click.option("--json", "as_json", is_flag=True)
@_offline_option
@config_option
@handle_errors
def eval_cmd(models: str, rag: bool | None, both: bool, questions: tuple[str, ...], backend: str | None, limit: int | None,
             out_dir: str | None, judge: bool, retrieval_only: bool, k: int | None, as_json: bool, offline: bool,
             config_path: str | None) -> None:
    """A/B evaluation: models x {RAG, closed book}; writes JSON, Markdown, HTML and a PNG chart."""
    from rag.evaluate import run_eval, table_header, table_rows
    from rag.netguard import maybe_offline

    ws = load_workspace(config_path)
    if retrieval_only:
        _retrieval_report(ws, list(questions) or None, limit, k, as_json)
        return
    modes = [True, False] if (both or rag is None) else [rag]
    names = [m.strip() for m in models.split(",") if m.strip()]
    say: Callable[[str], None] | None = None if as_json else (lambda msg: click.echo(f"  {msg}", err=True))
    with maybe_offline(offline or ws.config.chat.offline):
        report = run_eval(ws, models=names, rag_modes=modes, questions=list(questions) or None, out_dir=out_dir,
                          backend=backend, limit=limit, progress=say, judge=judge)
    if as_json:
        print_json({"out_dir": str(report.out_dir), "summary": report.summary})
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"raftsmith eval ({report.out_dir})")
    for head in table_header():
        table.add_column(head)
    for row in table_rows(report.summary):
        table.add_row(*row)
    Console().print(table)
    click.echo(f"Report: {report.out_dir / 'report.html'}")
