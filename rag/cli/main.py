"""Entry point: a click group whose sub-commands load lazily.

Commands are named by "module:attribute" strings and imported only when invoked, so
``raftsmith --help`` is fast and the laptop install never imports the builder's stack.
The ``rag`` library itself never imports ``builder``; only this dispatch table names it.
"""

from __future__ import annotations

import importlib
import logging
import os

import click

from rag import __version__

COMMANDS: dict[str, tuple[str, str]] = {
    "init": ("rag.cli.init_cmds:init_cmd", "Create a workspace (raftsmith.yaml and folders)."),
    "ingest": ("rag.cli.ingest_cmds:ingest_cmd", "Ingest documents or an llms.txt site into the index."),
    "search": ("rag.cli.search_cmds:search_cmd", "Search the index (dense, bm25 or hybrid)."),
    "index": ("rag.cli.index_cmds:index_group", "Index statistics: chunks, vectors, FAISS kind, disk and RAM."),
    "keys": ("rag.cli.keys_cmds:keys_group", "Store, delete or list API keys in the OS keyring."),
    "generate": ("builder.cli.generate_cmds:generate_cmd", "Generate RAFT training data with a teacher."),
    "train": ("builder.cli.train_cmds:train_cmd", "LoRA/QLoRA fine-tune the student model."),
    "train-retriever": ("builder.cli.retriever_cmds:train_retriever_cmd",
                        "Fine-tune the embedder on the RAFT rows and re-embed the index."),
    "export": ("builder.cli.export_cmds:export_cmd", "Merge, convert to GGUF, quantize, write Modelfiles."),
    "register": ("rag.cli.register_cmds:register_group", "Register the exported models with Ollama; list or remove them."),
    "ask": ("rag.cli.ask_cmds:ask_cmd", "Answer one question with citations."),
    "chat": ("rag.cli.chat_cmds:chat_cmd", "Interactive chat with base/tuned switching."),
    "eval": ("rag.cli.eval_cmds:eval_cmd", "A/B evaluation: models x {rag, no-rag}."),
    "serve": ("rag.cli.serve_cmds:serve_cmd", "OpenAI-compatible RAG endpoint (loopback)."),
    "ui": ("rag.cli.ui_cmds:ui_cmd", "A local web page: chat with sources, arena, status, eval report."),
    "audit": ("rag.cli.audit_cmds:audit_group", "Verify or show the hash-chained audit log."),
    "bundle": ("rag.cli.bundle_cmds:bundle_group", "Create, verify or install an offline bundle."),
    "demo": ("builder.cli.demo_cmds:demo_cmd", "The offline CPU demo, end to end."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target[0].split(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            missing = getattr(err, "name", None) or str(err)
            extra = "build" if module_name.startswith("builder") else "rag"

            @click.command(cmd_name, help=target[1], context_settings={"ignore_unknown_options": True})
            @click.argument("args", nargs=-1, type=click.UNPROCESSED)
            def unavailable(args: tuple[str, ...]) -> None:
                raise click.ClickException(
                    f"'raftsmith {cmd_name}' needs packages that are not installed ({missing}). "
                    f"Install them with: pip install 'raftsmith[{extra}]'"
                )

            return unavailable
        cmd = getattr(module, attr)
        assert isinstance(cmd, click.Command)
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_) for name, (_, help_) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="raftsmith")
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
def cli(verbose: int) -> None:
    """raftsmith: local domain assistants from your documents.

    Home machine: ingest -> generate -> train -> export -> bundle.
    Laptop: bundle install -> ask / chat / eval, offline, with an audit trail.
    """
    level = logging.WARNING - 10 * verbose
    if os.environ.get("RAFTSMITH_DEBUG"):
        level = logging.DEBUG
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s")


def main() -> None:
    cli(prog_name="raftsmith")


if __name__ == "__main__":
    main()
