"""The page behind ``raftsmith ui``: a Starlette app over :class:`rag.answer.Answerer`.

Every answer goes through ``Answerer.answer`` (retrieval, fencing, citations, one audit
record with ``channel: ui``), so the page answers exactly as ``raftsmith ask`` does.
Answers stream as NDJSON lines over a chunked POST response (``fetch`` reads them as they
come): ``{"type": "token"}`` pieces, then one ``{"type": "done"}`` with the result.

The page and its assets come from this package (``templates/``, ``static/``): no CDN, no
network. The server side trusts nothing the browser sends: requests are checked by
:mod:`rag.web.guard` and :mod:`rag.ui.security`, and the browser renders every value with ``textContent``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag.answer import Answerer, AnswerResult
from rag.config import Workspace
from rag.errors import ConfigError, RaftsmithError

log = logging.getLogger(__name__)

__all__ = ["MODELS", "UiState", "make_app"]

MODELS = ("base", "tuned")
PACKAGE_DIR = Path(__file__).resolve().parent
MAX_QUESTION_CHARS = 4000
KEPT_ARENAS = 64  # unmarked arena rounds remembered for a mark
STREAM_INTERVAL_S = 0.1  # the page gets streamed text at most this often (after the first token)


@dataclass
class UiState:
    """What the app holds between requests."""

    ws: Workspace
    engine: Answerer
    csrf_token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    model: str = "tuned"
    rag: bool = True
    max_tokens: int | None = None
    # one generation at a time: a llama.cpp context is not safe to share between threads
    generate_lock: threading.Lock = field(default_factory=threading.Lock)
    arenas: OrderedDict[str, dict[str, Any]] = field(default_factory=OrderedDict)


def _chunk_ref(c: Any) -> dict[str, Any]:
    return {"n": c.meta.get("citation"), "chunk_id": c.chunk_id, "source": c.source, "heading": c.heading,
            "start_line": c.start_line, "end_line": c.end_line, "location": c.location,
            "quote": c.meta.get("quote")}


def result_json(res: AnswerResult) -> dict[str, Any]:
    """The result as the page needs it (no chunk texts: the viewer fetches a chunk when opened)."""
    retrieved = []
    for i, c in enumerate(res.retrieved, start=1):
        ref = _chunk_ref(c)
        ref["n"] = i
        retrieved.append(ref)
    return {"answer": res.answer, "raw": res.raw, "model": res.model, "backend": res.backend, "rag": res.rag,
            "refused": res.refused, "latency_ms": round(res.latency_ms, 1), "audit_seq": res.audit_seq,
            "citations": [_chunk_ref(c) for c in res.citations], "retrieved": retrieved,
            "first_token_ms": round(res.timings.get("first_token_ms", 0.0), 1) or None,
            "timings": {k: round(v, 1) for k, v in res.timings.items()}}


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode("utf-8") + b"\n"


async def _run_streamed(work: Callable[[Callable[[dict[str, Any]], None]], None]) -> AsyncIterator[bytes]:
    """Run ``work(emit)`` in a thread; yield the emitted events as NDJSON lines as they come.

    The answer thread hands each event straight to the event loop (``call_soon_threadsafe``),
    and the loop writes every event already queued in one chunk. A sync generator would cost
    a thread-pool hop per token instead: on a 2-core laptop, every extra thread woken per
    token takes a core from llama.cpp's decoding threads.
    """
    loop = asyncio.get_running_loop()
    q: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    def put(item: dict[str, Any] | None) -> None:
        # RuntimeError: the loop is gone (server stopping), so nobody is reading any more
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(q.put_nowait, item)

    def target() -> None:
        try:
            work(put)
        except RaftsmithError as err:
            put({"type": "error", "message": str(err)})
        except Exception as err:  # noqa: BLE001 - the stream must end with a message, not hang
            log.exception("ui answer failed")
            put({"type": "error", "message": f"internal error ({type(err).__name__}); see the server log"})
        finally:
            put(None)

    threading.Thread(target=target, daemon=True, name="raftsmith-ui-answer").start()
    done = False
    while not done:
        got = [await q.get()]
        while not q.empty():
            got.append(q.get_nowait())
        lines = []
        for item in got:
            if item is None:
                done = True
                break
            lines.append(_line(item))
        if lines:
            yield b"".join(lines)


def _question(body: dict[str, Any]) -> str:
    q = body.get("question")
    if not isinstance(q, str) or not q.strip():
        raise ConfigError("The question is empty; type a question.")
    if len(q) > MAX_QUESTION_CHARS:
        raise ConfigError(f"The question is longer than {MAX_QUESTION_CHARS} characters; shorten it.")
    return q.strip()


def _choice(state: UiState, body: dict[str, Any]) -> tuple[str, bool]:
    model = body.get("model", state.model)
    rag = body.get("rag", state.rag)
    if model not in MODELS:
        raise ConfigError(f"Unknown model {model!r} for the page; choose one of {', '.join(MODELS)}.")
    if not isinstance(rag, bool):
        raise ConfigError("'rag' must be true or false.")
    return model, rag


class _TokenBatcher:
    """Pass the first token on at once, then the rest in batches at most every ``interval`` s.

    Each event wakes the server's event loop (and the browser) while llama.cpp decodes on
    every core; on a 2-core laptop a wake-up per token made the page's answers 10-30 % slower
    than ``ask``'s. A batch every 0.1 s still reads as streaming.
    """

    def __init__(self, emit: Callable[[dict[str, Any]], None], tag: dict[str, Any], interval: float = STREAM_INTERVAL_S):
        self.emit, self.tag, self.interval = emit, tag, interval
        self.pending: list[str] = []
        self.last: float | None = None

    def __call__(self, piece: str) -> None:
        self.pending.append(piece)
        now = time.monotonic()
        if self.last is None or now - self.last >= self.interval:
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        if self.pending:
            self.emit({"type": "token", "text": "".join(self.pending), **self.tag})
            self.pending = []
        self.last = time.monotonic() if now is None else now


def _answer(state: UiState, question: str, model: str, rag: bool, emit: Callable[[dict[str, Any]], None],
            side: str | None = None, extra: dict[str, Any] | None = None) -> AnswerResult:
    tag = {"side": side} if side else {}
    tokens = _TokenBatcher(emit, tag)
    with state.generate_lock:
        try:
            res = state.engine.answer(
                question, model=model, rag=rag, max_tokens=state.max_tokens, event="query", on_token=tokens,
                extra={"channel": "ui", "ui_choice": f"{model}{'' if rag else '-no-rag'}", **(extra or {})})
        finally:
            tokens.flush()
    emit({"type": "done", "result": result_json(res), **tag})
    return res


def make_app(state: UiState, security: Any) -> Any:
    """The Starlette app, wrapped by ``security`` (the guard and the page's CSRF check)."""
    import jinja2
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import (
        FileResponse,
        HTMLResponse,
        JSONResponse,
        Response,
        StreamingResponse,
    )
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    from rag.evaluate.preferences import CHOICES, append_mark
    from rag.ui.report import chart_path, report_view
    from rag.ui.sources import chunk_view
    from rag.ui.status import workspace_status
    from rag.web.guard import error_body, scrub

    templates = jinja2.Environment(loader=jinja2.FileSystemLoader(str(PACKAGE_DIR / "templates")),
                                   autoescape=True)

    def error(status: int, message: str) -> Response:
        # the shape rag.web.guard's refusals have, so the page reads one kind of error
        return Response(error_body(status, scrub(message, [state.ws.root])), status_code=status,
                        media_type="application/json")

    async def body_of(request: Request) -> dict[str, Any]:
        try:
            data = json.loads(await request.body())
        except ValueError:
            raise ConfigError("The request body is not valid JSON.") from None
        if not isinstance(data, dict):
            raise ConfigError("The request body must be a JSON object.")
        return data

    async def index(request: Request) -> Response:
        html = templates.get_template("index.html").render(
            csrf_token=state.csrf_token, corpus=state.ws.config.corpus.name, model=state.model, rag=state.rag,
            models=MODELS)
        return HTMLResponse(html)

    async def status(request: Request) -> Response:
        from starlette.concurrency import run_in_threadpool

        st = await run_in_threadpool(workspace_status, state.ws)
        return JSONResponse(st.to_dict() | {"choice": {"model": state.model, "rag": state.rag}})

    async def report(request: Request) -> Response:
        return JSONResponse(report_view(state.ws))

    async def chart(request: Request) -> Response:
        p = chart_path(state.ws)
        if p is None:
            return error(404, "No eval chart yet: run 'raftsmith eval' in this workspace.")
        return FileResponse(p, media_type="image/png")

    async def chunk(request: Request) -> Response:
        from starlette.concurrency import run_in_threadpool

        cid = request.path_params["chunk_id"]
        if not isinstance(cid, str) or not cid.isalnum() or len(cid) > 128:
            return error(404, "No such chunk.")
        c = await run_in_threadpool(state.engine.retriever.get, cid)
        if c is None:
            return error(404, "No such chunk in the index (it may have been re-ingested); ask again.")
        return JSONResponse(await run_in_threadpool(chunk_view, state.ws, c))

    async def switch(request: Request) -> Response:
        from starlette.concurrency import run_in_threadpool

        body = await body_of(request)
        model, rag = _choice(state, body)
        old = state.model

        def resolve() -> str:
            # in a worker thread: loading a model takes seconds, and a running answer holds the lock
            with state.generate_lock:
                if model != old:
                    return state.engine.switch_model(old, model).label
                return state.engine.backend(model)[0].label

        label = await run_in_threadpool(resolve)
        if rag != state.rag:
            state.engine.audit.append("rag_switch", rag=rag, previous=state.rag, channel="ui")
        state.model, state.rag = model, rag
        return JSONResponse({"model": model, "label": label, "rag": rag})

    async def ask(request: Request) -> Response:
        body = await body_of(request)
        question = _question(body)
        model, rag = _choice(state, body)
        state.engine.audit.check_writable()

        def work(emit: Callable[[dict[str, Any]], None]) -> None:
            _answer(state, question, model, rag, emit)

        return StreamingResponse(_run_streamed(work), media_type="application/x-ndjson",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def arena(request: Request) -> Response:
        body = await body_of(request)
        question = _question(body)
        _, rag = _choice(state, body)
        state.engine.audit.check_writable()
        arena_id = uuid.uuid4().hex

        def work(emit: Callable[[dict[str, Any]], None]) -> None:
            results = {}
            for side in MODELS:
                results[side] = _answer(state, question, side, rag, emit, side=side, extra={"arena_id": arena_id})
            state.arenas[arena_id] = {"question": question, "rag": rag, "results": results,
                                      "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            while len(state.arenas) > KEPT_ARENAS:
                state.arenas.popitem(last=False)
            emit({"type": "arena", "arena_id": arena_id})

        return StreamingResponse(_run_streamed(work), media_type="application/x-ndjson",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def mark(request: Request) -> Response:
        body = await body_of(request)
        choice = body.get("choice")
        if choice not in CHOICES:
            raise ConfigError(f"Mark one of {', '.join(CHOICES)}.")
        pending = state.arenas.pop(str(body.get("arena_id")), None)
        if pending is None:
            return error(409, "That arena round is unknown or already marked; run the arena again.")
        res: dict[str, AnswerResult] = pending["results"]
        record = {"ts": pending["ts"], "arena_id": body["arena_id"], "question": pending["question"],
                  "rag": pending["rag"], "choice": choice,
                  **{side: {"model": r.model, "answer": r.raw, "latency_ms": round(r.latency_ms, 1),
                            "audit_seq": r.audit_seq, "cited": [c.chunk_id for c in r.citations]}
                     for side, r in res.items()}}
        path = append_mark(state.ws, record)
        state.engine.audit.append("arena_mark", choice=choice, arena_id=body["arena_id"], channel="ui",
                                  answers=[r.audit_seq for r in res.values()])
        return JSONResponse({"recorded": choice, "path": str(path.relative_to(state.ws.root))})

    def guarded(fn: Callable[[Request], Any]) -> Callable[[Request], Any]:
        async def run(request: Request) -> Response:
            try:
                response: Response = await fn(request)
                return response
            except RaftsmithError as err:
                return error(400, str(err))
        return run

    routes = [
        Route("/", index),
        Route("/api/status", guarded(status)),
        Route("/api/report", guarded(report)),
        Route("/api/report/chart.png", chart),
        Route("/api/chunk/{chunk_id}", guarded(chunk)),
        Route("/api/switch", guarded(switch), methods=["POST"]),
        Route("/api/ask", guarded(ask), methods=["POST"]),
        Route("/api/arena", guarded(arena), methods=["POST"]),
        Route("/api/arena/mark", guarded(mark), methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(PACKAGE_DIR / "static")), name="static"),
    ]

    return security(Starlette(routes=routes))
