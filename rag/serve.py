"""``raftsmith serve``: an OpenAI-compatible endpoint with RAG and audit, loopback by default.

GET /v1/models lists ``tuned``, ``base`` and their ``-no-rag`` variants; POST
/v1/chat/completions answers the last user message with retrieval and citations (earlier
user/assistant turns are the history; a client's own system prompt is ignored because the
RAG system prompt is what the model was trained with). ``stream: true`` sends SSE chunks as
the model generates them. Open WebUI or any OpenAI SDK can point at http://127.0.0.1:PORT/v1.

It is a Starlette app under uvicorn, wrapped in :mod:`rag.web.guard` (Host/Origin checks,
JSON-only POSTs, body cap, bearer token). Requests are bounded: only the listed model names,
``max_tokens`` clamped to ``serve.max_tokens_limit``, a cap on messages and history
characters, a wall-clock cap per generation, and at most ``serve.max_running`` generations
plus ``serve.max_waiting`` waiting (beyond: 503). Every request is one audit record: a
chat completion is an event ``query`` (outcome answered / no_context / error / client_gone /
timeout), anything refused is an event ``serve_request`` with outcome ``rejected`` and a
reason code (never the body or a token).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from rag.answer import Answerer, AnswerResult
from rag.config import Workspace
from rag.errors import AuditError, ConfigError, RaftsmithError
from rag.netguard import is_loopback_host
from rag.web.capacity import Capacity
from rag.web.guard import GuardMiddleware, GuardPolicy, Rejection, error_body, scrub, serve_token
from rag.web.runner import LocalServer

log = logging.getLogger(__name__)
MODELS = ("tuned", "base", "tuned-no-rag", "base-no-rag")


class RequestRefused(ConfigError):
    """A chat request is malformed or over a limit; ``reason`` is the audit reason code."""

    def __init__(self, message: str, reason: str = "bad_request", status: int = 400):
        super().__init__(message)
        self.reason = reason
        self.status = status


class ClientGone(Exception):  # noqa: N818 - an event, not an error
    """Raised inside the generation when the HTTP client has disconnected (stops the model)."""


class GenerationTimeout(Exception):  # noqa: N818
    """Raised inside the generation when it ran past ``serve.max_generation_s``."""


def sources_footer(res: AnswerResult) -> str:
    if not res.citations:
        return ""
    lines = [f"[{c.meta.get('citation', '?')}] {c.location}" + (f" ({c.heading})" if c.heading else "") for c in res.citations]
    return "\n\nSources:\n" + "\n".join(lines)


@dataclass(frozen=True)
class ChatRequest:
    """A validated /v1/chat/completions body."""

    model: str
    question: str
    history: list[dict[str, str]]
    max_tokens: int
    stream: bool

    @property
    def ref(self) -> str:
        return self.model.removesuffix("-no-rag")

    @property
    def rag(self) -> bool:
        return not self.model.endswith("-no-rag")


def parse_chat_request(raw: bytes, ws: Workspace) -> ChatRequest:
    """Validate a request body against the serve limits; raises :class:`RequestRefused`."""
    cfg = ws.config.serve
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise RequestRefused("The request body is not valid JSON; send a JSON object with 'model' and 'messages'.",
                             "bad_json") from None
    if not isinstance(body, dict):
        raise RequestRefused(f"The request body must be a JSON object, not {type(body).__name__}.", "bad_body")
    model = body.get("model", "tuned")
    if not isinstance(model, str) or model not in MODELS:
        shown = model[:64] if isinstance(model, str) else type(model).__name__
        raise RequestRefused(f"Unknown model {shown!r}: use one of {', '.join(MODELS)} (see GET /v1/models).",
                             "unknown_model")
    max_tokens = cfg.max_tokens
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise RequestRefused(f"'{key}' must be a positive integer (got {json.dumps(value)[:32]}).", "bad_max_tokens")
        max_tokens = min(value, cfg.max_tokens_limit)
        break
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestRefused("'stream' must be true or false.", "bad_body")
    question, history = _split_messages(body.get("messages"), cfg.max_messages, cfg.max_history_chars)
    return ChatRequest(model, question, history, max_tokens, stream)


def _split_messages(messages: Any, max_messages: int, max_chars: int) -> tuple[str, list[dict[str, str]]]:
    if not isinstance(messages, list) or not messages:
        raise RequestRefused("'messages' must be a non-empty list of {role, content} objects.", "bad_messages")
    if len(messages) > max_messages:
        raise RequestRefused(f"Too many messages ({len(messages)}; the limit is {max_messages}, serve.max_messages): "
                             "send a shorter history.", "too_many_messages")
    turns, chars = [], 0
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") \
                or not isinstance(m.get("content"), str):
            raise RequestRefused("each message needs a role (system|user|assistant) and string content",
                                 "bad_messages")
        chars += len(m["content"])
        if m["role"] != "system":
            turns.append({"role": m["role"], "content": m["content"]})
    if chars > max_chars:
        raise RequestRefused(f"The messages hold {chars} characters; the limit is {max_chars} "
                             "(serve.max_history_chars): send a shorter history.", "history_too_long")
    if not turns or turns[-1]["role"] != "user":
        raise RequestRefused("the last message must come from the user", "bad_messages")
    if not turns[-1]["content"].strip():
        raise RequestRefused("The last user message is empty; type a question.", "bad_messages")
    return turns[-1]["content"], turns[:-1]


class RagServer:
    """The running endpoint: the guarded Starlette app, its uvicorn server and the Answerer."""

    def __init__(self, ws: Workspace, host: str, port: int, engine: Answerer, policy: GuardPolicy):
        self.ws = ws
        self.engine = engine
        self.policy = policy
        self.started = int(time.time())
        cfg = ws.config.serve
        self.capacity = Capacity(cfg.max_running, cfg.max_waiting, cfg.wait_s)
        self.app = GuardMiddleware(self._build_app(), policy, on_reject=self._record_rejection)
        self._http = LocalServer(self.app, host, port, backlog=cfg.backlog, limit_concurrency=cfg.max_connections)

    @property
    def port(self) -> int:
        return self._http.port

    @property
    def url(self) -> str:
        return self._http.url + "/v1"

    def serve_forever(self) -> None:
        self._http.serve_forever()

    def shutdown(self) -> None:
        self._http.shutdown()

    def server_close(self) -> None:
        self._http.server_close()

    # -- audit -----------------------------------------------------------------------------

    def public(self, text: str) -> str:
        """A message fit to send to a client: no workspace or home paths."""
        return scrub(text, [self.ws.root])

    def _audit_rejected(self, reason: str, status: int, method: str, path: str, client: str | None,
                        **extra: Any) -> None:
        try:
            self.engine.audit.append("serve_request", outcome="rejected", reason=reason, status=status,
                                     method=method, path=path[:200], client=client, channel="serve", **extra)
        except AuditError as err:  # the refusal still goes out; the log is what failed
            log.error("could not record a refused request: %s", err)

    def _record_rejection(self, rej: Rejection) -> None:
        self._audit_rejected(rej.reason, rej.status, rej.method, rej.path, rej.client)

    # -- routes ----------------------------------------------------------------------------

    def _build_app(self) -> Any:
        from starlette.applications import Starlette
        from starlette.exceptions import HTTPException
        from starlette.requests import Request
        from starlette.responses import Response
        from starlette.routing import Route

        async def models(request: Request) -> Response:
            self._audit_ok_listing(request)
            return _json(200, {"object": "list", "data": [
                {"id": m, "object": "model", "created": self.started, "owned_by": "raftsmith"} for m in MODELS]})

        async def chat(request: Request) -> Any:  # a Response or an ASGI _Completion
            raw = await request.body()
            client = request.client.host if request.client else None
            try:
                req = parse_chat_request(raw, self.ws)
            except RequestRefused as err:
                self._audit_rejected(err.reason, err.status, "POST", request.url.path, client,
                                     body_bytes=len(raw), body_sha256=hashlib.sha256(raw).hexdigest())
                return _error(err.status, self.public(str(err)), code=err.reason)
            if not self.capacity.admit():
                self._audit_rejected("busy", 503, "POST", request.url.path, client, model=req.model)
                return _error(503, "The server is busy (serve.max_running + serve.max_waiting requests in "
                              "progress); retry shortly.", "server_busy", code="busy", headers={"Retry-After": "5"})
            return _Completion(self, req, client)

        async def not_found(request: Request, exc: Exception) -> Response:
            status = exc.status_code if isinstance(exc, HTTPException) else 500
            client = request.client.host if request.client else None
            reason = {404: "no_route", 405: "bad_method"}.get(status, "server_error")
            self._audit_rejected(reason, status, request.method, request.url.path, client)
            if status == 404:
                msg = "No such route; use GET /v1/models or POST /v1/chat/completions."
            elif status == 405:
                msg = f"{request.method} is not allowed here; use GET /v1/models or POST /v1/chat/completions."
            else:
                msg = "Internal error; the server log has the details."
            return _error(status, msg, code=reason)

        async def crash(request: Request, exc: Exception) -> Response:
            log.exception("serve: unhandled error", exc_info=exc)
            return await not_found(request, exc)

        return Starlette(routes=[
            Route("/v1/models", models, methods=["GET"]), Route("/v1/models/", models, methods=["GET"]),
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/chat/completions/", chat, methods=["POST"]),
        ], exception_handlers={HTTPException: not_found, Exception: crash})

    def _audit_ok_listing(self, request: Any) -> None:
        try:
            self.engine.audit.append("serve_request", outcome="ok", method="GET", path=request.url.path,
                                     client=request.client.host if request.client else None, channel="serve")
        except AuditError as err:
            log.error("could not record a request: %s", err)


def _json(status: int, obj: Any, headers: dict[str, str] | None = None) -> Any:
    from starlette.responses import Response

    return Response(json.dumps(obj), status_code=status, media_type="application/json",
                    headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", **(headers or {})})


def _error(status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
           headers: dict[str, str] | None = None) -> Any:
    from starlette.responses import Response

    return Response(error_body(status, message, kind, code), status_code=status, media_type="application/json",
                    headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", **(headers or {})})


class _Completion:
    """One admitted chat completion, as an ASGI response: runs the model in a worker thread.

    The worker waits for a running slot, resolves the model, then streams tokens back through
    an asyncio queue. A watcher task reads ``receive`` for ``http.disconnect``; when the client
    goes, the next token raises :class:`ClientGone` inside the generation, the model lock is
    released, and the worker writes the ``client_gone`` audit record.
    """

    def __init__(self, server: RagServer, req: ChatRequest, client: str | None):
        self.server = server
        self.req = req
        self.client = client
        self.cid = "chatcmpl-" + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.gone = threading.Event()

    # -- worker thread ---------------------------------------------------------------------

    def _work(self, loop: asyncio.AbstractEventLoop, q: asyncio.Queue[tuple[str, Any]]) -> None:
        def put(kind: str, value: Any = None) -> None:
            loop.call_soon_threadsafe(q.put_nowait, (kind, value))

        srv, req = self.server, self.req
        engine, cfg = srv.engine, srv.ws.config.serve
        had_slot = srv.capacity.acquire()
        pieces: list[str] = []
        extra = {"channel": "serve", "client": self.client, "request_id": self.cid, "stream": req.stream,
                 "max_tokens": req.max_tokens, "requested_model": req.model}
        try:
            if not had_slot:
                srv._audit_rejected("busy", 503, "POST", "/v1/chat/completions", self.client, model=req.model)
                put("busy")
                return
            if self.gone.is_set():
                self._record_gone(pieces, extra, stage="waiting")
                return
            try:  # resolve the model and check the log before committing to a 200
                engine.audit.check_writable()
                engine.backend(req.ref)
            except AuditError as err:
                put("audit", err)
                return
            except RaftsmithError as err:
                srv._audit_rejected("model_unavailable", 400, "POST", "/v1/chat/completions", self.client,
                                    model=req.model)
                put("error", err)
                return
            put("start")
            deadline = time.monotonic() + cfg.max_generation_s

            def on_token(piece: str) -> None:
                if self.gone.is_set():
                    raise ClientGone()
                if time.monotonic() > deadline:
                    raise GenerationTimeout()
                pieces.append(piece)
                put("token", piece)

            try:
                res = engine.answer(req.question, model=req.ref, rag=req.rag, history=req.history, event="query",
                                    max_tokens=req.max_tokens, on_token=on_token, extra=extra)
            except ClientGone:
                self._record_gone(pieces, extra, stage="generating")
                return
            except GenerationTimeout:
                self._record_stop(pieces, extra, "timeout")
                put("timeout")
                return
            except AuditError as err:
                put("audit", err)
                return
            except RaftsmithError as err:  # the Answerer recorded it (outcome "error")
                put("failed", err)
                return
            completion = engine.backend(req.ref)[1].count_tokens(res.raw) if res.raw else 0
            put("done", (res, completion))
        except Exception as err:  # noqa: BLE001 - reported to the client as a 500, logged here
            log.exception("serve: the answer failed")
            put("crash", err)
        finally:
            srv.capacity.release(had_slot=had_slot)

    def _record_gone(self, pieces: list[str], extra: dict[str, Any], stage: str) -> None:
        self._record_stop(pieces, {**extra, "stage": stage}, "client_gone")

    def _record_stop(self, pieces: list[str], extra: dict[str, Any], outcome: str) -> None:
        text = "".join(pieces)
        engine = self.server.engine
        try:
            model = engine.backend(self.req.ref)[0].audit_model()
        except RaftsmithError:
            model = {"requested": self.req.model}
        try:
            engine.audit.append("query", outcome=outcome, query=self.req.question, rag=self.req.rag,
                                model=model, answer=text or None,
                                            answer_chars=len(text), **extra)
        except AuditError as err:
            log.error("could not record a %s request: %s", outcome, err)

    # -- ASGI side -------------------------------------------------------------------------

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        loop = asyncio.get_running_loop()
        q: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        async def watch() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    self.gone.set()
                    return

        watcher = asyncio.create_task(watch())
        worker = threading.Thread(target=self._work, args=(loop, q), name=f"serve-{self.cid}", daemon=True)
        worker.start()
        try:
            kind, value = await q.get()
            if kind != "start":
                await self._send_error(send, kind, value)
                return
            if self.req.stream:
                await self._stream(send, q)
            else:
                await self._whole(send, q)
        finally:
            watcher.cancel()

    async def _send_error(self, send: Any, kind: str, value: Any) -> None:
        if self.gone.is_set():
            return
        pub = self.server.public
        if kind == "busy":
            resp = _error(503, "The server is busy: no generation slot came free within serve.wait_s; retry shortly.",
                          "server_busy", code="busy", headers={"Retry-After": "5"})
        elif kind == "audit":
            resp = _error(503, pub(str(value)), "audit_error", code="audit_unwritable")
        elif kind in ("error", "failed"):
            resp = _error(400, pub(str(value)), code="model_unavailable" if kind == "error" else "answer_failed")
        elif kind == "timeout":
            resp = _error(504, "The answer took longer than serve.max_generation_s and was stopped; ask for fewer "
                          "max_tokens.", "timeout", code="timeout")
        else:
            resp = _error(500, "Internal error; the server log has the details.", "server_error", code="server_error")
        await _send_response(resp, send)

    async def _whole(self, send: Any, q: asyncio.Queue[tuple[str, Any]]) -> None:
        while True:
            kind, value = await q.get()
            if kind == "token":
                continue
            if kind != "done":
                await self._send_error(send, kind, value)
                return
            res, completion = value
            body = {
                "id": self.cid, "object": "chat.completion", "created": self.created, "model": self.req.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": res.raw + sources_footer(res)},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": res.prompt_tokens, "completion_tokens": completion,
                          "total_tokens": res.prompt_tokens + completion},
                "citations": [c.to_dict() for c in res.citations], "refused": res.refused,
            }
            await _send_response(_json(200, body), send)
            return

    async def _stream(self, send: Any, q: asyncio.Queue[tuple[str, Any]]) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
            (b"x-content-type-options", b"nosniff"), (b"x-accel-buffering", b"no")]})

        async def event(delta: dict[str, Any], finish: str | None = None) -> None:
            chunk = {"id": self.cid, "object": "chat.completion.chunk", "created": self.created, "model": self.req.model,
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            await self._send_body(send, b"data: " + json.dumps(chunk).encode() + b"\n\n")

        await event({"role": "assistant", "content": ""})
        while True:
            kind, value = await q.get()
            if kind == "token":
                await event({"content": value})
                continue
            if kind == "done":
                footer = sources_footer(value[0])
                if footer:
                    await event({"content": footer})
                await event({}, "stop")
            elif kind == "timeout":
                await event({"content": "\n[stopped: the answer ran past serve.max_generation_s]"}, "length")
            else:
                await event({"content": f"\n[error: {self.server.public(str(value))}]"}, "stop")
            break
        await self._send_body(send, b"data: [DONE]\n\n", more=False)

    async def _send_body(self, send: Any, data: bytes, more: bool = True) -> None:
        if self.gone.is_set():
            return
        try:
            await send({"type": "http.response.body", "body": data, "more_body": more})
        except OSError:  # ASGI 2.4: sending to a closed connection raises
            self.gone.set()


async def _send_response(resp: Any, send: Any) -> None:
    async def no_receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    await resp({"type": "http"}, no_receive, send)


def make_server(ws: Workspace, host: str = "127.0.0.1", port: int = 8080, allow_remote: bool = False) -> RagServer:
    """Build (not start) the server; refuses a non-loopback bind unless ``allow_remote``.

    Off loopback (or with ``serve.require_token``) every request needs the bearer token,
    kept in the keyring as ``raftsmith/serve-token`` (created on first start) or given in
    ``$RAFTSMITH_SERVE_TOKEN``. On loopback the token is optional.
    """
    loopback = bool(host) and is_loopback_host(host)  # "" would bind every interface
    if not loopback and not allow_remote:
        shown = host if host else repr(host)
        raise ConfigError(f"Refusing to listen on {shown}: it is not a loopback address, and the endpoint would "
                          "expose your documents to the network. Use --host 127.0.0.1, or pass --allow-remote "
                          "(a bearer token is then required) if you mean it.")
    cfg = ws.config.serve
    require = (not loopback) or cfg.require_token
    token = serve_token(required=require)
    policy = GuardPolicy(host=host, token=token, require_token=require, max_body_bytes=cfg.max_body_kb * 1024,
                         extra_hosts=tuple(cfg.allowed_hosts))
    engine = Answerer(ws)
    engine.audit.check_writable()
    server = RagServer(ws, host, port, engine, policy)
    engine.audit.append("serve_start", host=host, port=server.port, outcome="ok", token_required=require,
                        token_set=token is not None)
    return server
