"""``raftsmith serve``: an OpenAI-compatible endpoint with RAG and audit, loopback by default.

GET /v1/models lists ``tuned``, ``base`` and their ``-no-rag`` variants; POST
/v1/chat/completions answers the last user message with retrieval and citations (earlier
user/assistant turns are the history; a client's own system prompt is ignored because the
RAG system prompt is what the model was trained with). ``stream: true`` sends SSE chunks as
the model generates them. Every request is one audit record (event "query", channel "serve").
Open WebUI or any OpenAI SDK can point at http://127.0.0.1:PORT/v1.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from rag.answer import Answerer, AnswerResult
from rag.config import Workspace
from rag.errors import AuditError, ConfigError, RaftsmithError
from rag.netguard import is_loopback_host

log = logging.getLogger(__name__)
MODELS = ("tuned", "base", "tuned-no-rag", "base-no-rag")


def sources_footer(res: AnswerResult) -> str:
    if not res.citations:
        return ""
    lines = [f"[{c.meta.get('citation', '?')}] {c.location}" + (f" ({c.heading})" if c.heading else "") for c in res.citations]
    return "\n\nSources:\n" + "\n".join(lines)


def _split_messages(messages: Any) -> tuple[str, list[dict[str, str]]]:
    if not isinstance(messages, list) or not messages:
        raise ConfigError("'messages' must be a non-empty list of {role, content} objects.")
    turns = []
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") or not isinstance(m.get("content"), str):
            raise ConfigError("each message needs a role (system|user|assistant) and string content")
        if m["role"] != "system":
            turns.append({"role": m["role"], "content": m["content"]})
    if not turns or turns[-1]["role"] != "user":
        raise ConfigError("the last message must come from the user")
    return turns[-1]["content"], turns[:-1]


class RagServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, ws: Workspace, host: str, port: int, engine: Answerer):
        self.ws = ws
        self.engine = engine
        self.started = int(time.time())
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        name = host.decode() if isinstance(host, bytes) else str(host)
        return f"http://{name}:{port}/v1"


class _Handler(BaseHTTPRequestHandler):
    server: RagServer
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), fmt % args)

    def _json(self, code: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, code: int, message: str, kind: str = "invalid_request_error") -> None:
        self._json(code, {"error": {"message": message, "type": kind, "code": code}})

    def do_GET(self) -> None:  # noqa: N802
        if self.path.rstrip("/") == "/v1/models":
            self._json(200, {"object": "list", "data": [
                {"id": m, "object": "model", "created": self.server.started, "owned_by": "raftsmith"} for m in MODELS]})
        else:
            self._error(404, f"no route GET {self.path}; use /v1/models or POST /v1/chat/completions")

    def do_POST(self) -> None:  # noqa: N802
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._error(404, f"no route POST {self.path}")
            return
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            question, history = _split_messages(body.get("messages"))
        except (ValueError, ConfigError) as err:
            self._error(400, f"bad request: {err}")
            return
        model = str(body.get("model") or "tuned")
        rag = not model.endswith("-no-rag")
        ref = model.removesuffix("-no-rag")
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        kw: dict[str, Any] = {"model": ref, "rag": rag, "history": history, "event": "query",
                              "extra": {"channel": "serve", "client": self.client_address[0]},
                              "max_tokens": int(max_tokens) if max_tokens else None}
        cid = "chatcmpl-" + uuid.uuid4().hex[:24]
        if body.get("stream"):
            self._stream(cid, model, question, kw)
            return
        try:
            res = self.server.engine.answer(question, **kw)
        except AuditError as err:
            self._error(503, str(err), "audit_error")
            return
        except RaftsmithError as err:
            self._error(400, str(err))
            return
        content = res.raw + sources_footer(res)
        completion = self.server.engine.backend(kw["model"])[1].count_tokens(res.raw) if res.raw else 0
        self._json(200, {
            "id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": res.prompt_tokens, "completion_tokens": completion,
                      "total_tokens": res.prompt_tokens + completion},
            "citations": [c.to_dict() for c in res.citations], "refused": res.refused,
        })

    def _stream(self, cid: str, model: str, question: str, kw: dict[str, Any]) -> None:
        engine = self.server.engine
        try:  # resolve the model and check the audit log before committing to a 200 stream
            engine.audit.check_writable()
            engine.backend(kw["model"])
        except AuditError as err:
            self._error(503, str(err), "audit_error")
            return
        except RaftsmithError as err:
            self._error(400, str(err))
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        created = int(time.time())

        def event(delta: dict[str, Any], finish: str | None = None) -> None:
            chunk = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            self.wfile.flush()

        event({"role": "assistant", "content": ""})
        try:
            res = engine.answer(question, on_token=lambda p: event({"content": p}), **kw)
            footer = sources_footer(res)
            if footer:
                event({"content": footer})
            event({}, "stop")
        except RaftsmithError as err:
            event({"content": f"\n[error: {err}]"}, "stop")
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


def make_server(ws: Workspace, host: str = "127.0.0.1", port: int = 8080, allow_remote: bool = False) -> RagServer:
    """Build (not start) the server; refuses a non-loopback bind unless ``allow_remote``."""
    if not is_loopback_host(host) and not allow_remote:
        raise ConfigError(f"Refusing to listen on {host}: the endpoint has no authentication and would expose "
                          "your documents to the network. Use --host 127.0.0.1, or pass --allow-remote if you mean it.")
    engine = Answerer(ws)
    engine.audit.check_writable()
    try:
        server = RagServer(ws, host, port, engine)
    except OSError as err:
        raise ConfigError(f"Cannot listen on {host}:{port} ({err.strerror or err}); pick another --port.") from None
    engine.audit.append("serve_start", host=host, port=server.server_address[1], outcome="ok")
    return server
