"""The chat REPL behind ``raftsmith chat``: history, streamed answers, /model A/B switching.

It reads lines from any text stream (a terminal, a pipe, click's CliRunner), so the same
loop is what people use and what the tests drive.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TextIO

from rag.answer import Answerer, AnswerResult
from rag.config import Workspace
from rag.errors import AuditError, RaftsmithError
from rag.llm.base import Message

HELP = """Commands:
  /model base|tuned|NAME   switch the model (the A/B switch); /model alone shows the current one
  /rag on|off              answer with or without the documents
  /sources                 where the last answer came from (cited and retrieved chunks)
  /reset                   forget the conversation history
  /help                    this text
  /quit                    leave (Ctrl-D works too)"""


def format_sources(res: AnswerResult) -> list[str]:
    lines: list[str] = []
    cited = {c.chunk_id for c in res.citations}
    for c in res.citations:
        span = c.meta.get("quote_lines")
        where = (f"{c.source}:{span[0]}" + (f"-{span[1]}" if span[1] != span[0] else "")) if span else c.location
        lines.append(f"  [{c.meta.get('citation', '?')}] {where}" + (f"  ({c.heading})" if c.heading else ""))
    rest = [(i, c) for i, c in enumerate(res.retrieved, start=1) if c.chunk_id not in cited]
    if rest:
        lines.append("  retrieved, not cited:" if res.citations else "  retrieved (the answer cites none):")
        lines.extend(f"    [{i}] {c.location}" + (f"  ({c.heading})" if c.heading else "") for i, c in rest)
    if res.dropped_chunks:
        lines.append(f"  {res.dropped_chunks} lower-ranked chunk(s) left out to fit the model context")
    return lines


class ChatSession:
    def __init__(self, ws: Workspace, model: str | None = None, backend: str | None = None,
                 rag: bool = True, k: int | None = None, engine: Answerer | None = None):
        self.ws = ws
        self.engine = engine or Answerer(ws)
        self.model = model or ws.config.chat.model
        self.backend = backend
        self.rag = rag
        self.k = k
        self.history: list[Message] = []
        self.last: AnswerResult | None = None

    def ask(self, question: str, on_token: Callable[[str], None] | None = None) -> AnswerResult:
        res = self.engine.answer(question, model=self.model, backend=self.backend, rag=self.rag, k=self.k,
                                 history=self.history, on_token=on_token, event="chat_turn")
        self.last = res
        if not res.refused:
            self.history += [{"role": "user", "content": question}, {"role": "assistant", "content": res.raw}]
        return res

    def switch(self, new: str) -> str:
        ref = self.engine.switch_model(self.model, new, self.backend)
        self.model = new
        return ref.label

    def reset(self) -> None:
        self.history.clear()
        self.last = None


def run_repl(session: ChatSession, stdin: TextIO, write: Callable[[str], None], interactive: bool) -> int:
    """Read-eval-print until /quit or end of input. Returns the exit code."""
    ref, _ = session.engine.backend(session.model, session.backend)
    write(f"raftsmith chat - model {ref.label} via {ref.backend}, {'RAG' if session.rag else 'closed book'}. /help for commands.\n")
    if interactive:
        with contextlib.suppress(ImportError):  # line editing and history for input(); absent on Windows
            import readline  # noqa: F401
    while True:
        if interactive:
            try:
                line = input("you> ") + "\n"
            except EOFError:
                write("\n")
                return 0
        else:
            line = stdin.readline()
        if not line:
            return 0
        text = line.strip()
        if not text:
            continue
        try:
            if text.startswith("/"):
                if _command(session, text, write):
                    return 0
                continue
            if interactive:
                write("assistant> ")
            res = session.ask(text, on_token=write)
            write("\n")
            if res.citations:
                write("Sources: " + ", ".join(f"[{c.meta.get('citation')}] {c.location}" for c in res.citations) + "\n")
        except AuditError as err:
            write(f"Error: {err}\n")
            return 1
        except RaftsmithError as err:
            write(f"Error: {err}\n")


def _command(session: ChatSession, text: str, write: Callable[[str], None]) -> bool:
    cmd, _, arg = text.partition(" ")
    arg = arg.strip()
    if cmd in ("/quit", "/exit", "/q"):
        return True
    if cmd == "/help":
        write(HELP + "\n")
    elif cmd == "/model":
        if not arg:
            ref, _ = session.engine.backend(session.model, session.backend)
            write(f"model: {ref.label} ({ref.digest or 'no digest'})\n")
        else:
            write(f"switched to {session.switch(arg)}\n")
    elif cmd == "/rag":
        if arg not in ("on", "off"):
            write("usage: /rag on|off\n")
        else:
            session.rag = arg == "on"
            write(f"RAG {'on' if session.rag else 'off (closed book)'}\n")
    elif cmd == "/sources":
        if session.last is None:
            write("no answer yet\n")
        else:
            write("\n".join(format_sources(session.last) or ["  (no sources: closed book or nothing relevant)"]) + "\n")
    elif cmd == "/reset":
        session.reset()
        write("history cleared\n")
    else:
        write(f"unknown command {cmd}; /help lists them\n")
    return False

