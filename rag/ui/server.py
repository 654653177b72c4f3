"""Bind and run the page: loopback by default; another address only with ``allow_remote``, and then
every API call needs the bearer token (:func:`rag.web.guard.serve_token`, kept in the keyring).

The request checks are :class:`rag.web.guard.GuardMiddleware` (shared with ``raftsmith serve``:
Host against DNS rebinding, Origin, JSON-only writes, body cap, bearer token) around
:class:`rag.ui.security.PageCsrf` (the page's CSRF token and security headers). Refused
requests are recorded in the audit log (event ``ui_request``, outcome ``rejected``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import MutableMapping
from dataclasses import dataclass, field, replace
from typing import Any

from rag.answer import Answerer
from rag.config import Workspace
from rag.errors import AuditError, ConfigError
from rag.netguard import is_loopback_host
from rag.ui.app import UiState, make_app
from rag.ui.security import PageCsrf
from rag.web.guard import GuardMiddleware, GuardPolicy, Rejection, serve_token
from rag.web.runner import LocalServer

log = logging.getLogger(__name__)

__all__ = ["UiServer", "make_ui_server"]


@dataclass
class UiServer:
    state: UiState
    app: Any  # the guarded ASGI app
    http: LocalServer
    token_required: bool
    _thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return self.http.url + "/"

    def warm_up(self) -> threading.Thread:
        """Load the embedder, index and the selected model in the background while the page opens.

        A question asked meanwhile waits for it (both hold the generation lock), so nothing
        loads twice. A failure here is only logged: the question will raise it properly.
        """
        state = self.state

        def run() -> None:
            try:
                with state.generate_lock:
                    took = state.engine.warm(state.model, rag=state.rag)
                log.info("ui ready: %s", ", ".join(f"{k} {v:.1f}" for k, v in took.items()))
            except Exception as err:  # noqa: BLE001 - the first question reports it with its fix
                log.warning("could not load the models ahead of the first question: %s", err)

        thread = threading.Thread(target=run, daemon=True, name="raftsmith-ui-warm")
        thread.start()
        return thread

    def serve_forever(self) -> None:
        try:
            self.http.serve_forever()
        finally:
            self.close()

    def start(self) -> None:
        """Serve from a background thread (tests, benchmarks). The socket already listens,
        so requests made right away wait in its backlog."""
        self._thread = threading.Thread(target=self.http.serve_forever, daemon=True, name="raftsmith-ui")
        self._thread.start()

    def stop(self) -> None:
        self.http.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.close()

    def close(self) -> None:
        self.http.server_close()
        self.state.engine.close()


class _PublicPage:
    """Route GET/HEAD of the page and /static/ to ``public``, everything else to ``locked``."""

    def __init__(self, public: Any, locked: Any):
        self.public, self.locked = public, locked

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        path = str(scope.get("path", ""))
        open_ = scope["type"] == "http" and scope.get("method") in ("GET", "HEAD") and (
            path == "/" or (path.startswith("/static/") and ".." not in path))
        await (self.public if open_ else self.locked)(scope, receive, send)


def make_ui_server(ws: Workspace, host: str = "127.0.0.1", port: int = 8765, *, allow_remote: bool = False,
                   model: str = "tuned", rag: bool = True, max_tokens: int | None = None) -> UiServer:
    """Bind the socket and build the guarded app (nothing is served until ``serve_forever`` or ``start``)."""
    loopback = bool(host) and is_loopback_host(host)  # "" would bind every interface
    if not loopback and not allow_remote:
        raise ConfigError(f"Refusing to serve the page on {host or repr(host)}: it shows your documents and answers "
                          "questions. Use --host 127.0.0.1, or pass --allow-remote (the page then asks for the bearer "
                          "token kept in the keyring as raftsmith/serve-token) if you mean it.")
    cfg = ws.config.serve
    require = (not loopback) or cfg.require_token
    token = serve_token(required=True) if require else None
    policy = GuardPolicy(host=host, token=token, require_token=require, max_body_bytes=cfg.max_body_kb * 1024,
                         extra_hosts=tuple(cfg.allowed_hosts))
    engine = Answerer(ws)
    engine.audit.check_writable()
    state = UiState(ws=ws, engine=engine, model=model, rag=rag, max_tokens=max_tokens)

    def record(rej: Rejection) -> None:
        try:
            engine.audit.append("ui_request", outcome="rejected", reason=rej.reason, status=rej.status,
                                method=rej.method, path=rej.path, client=rej.client, channel="ui")
        except AuditError as err:  # the refusal still goes out; the log is what failed
            log.error("could not record a refused request: %s", err)

    def guarded(inner: Any) -> Any:
        page = PageCsrf(inner, state.csrf_token, record)
        locked = GuardMiddleware(page, policy, on_reject=record)
        if not require:
            return locked
        # A browser cannot send a bearer token when it loads the page itself: the HTML and its
        # assets (no data in them) pass the guard without it; every /api/ call needs it.
        public = GuardMiddleware(page, replace(policy, token=None, require_token=False), on_reject=record)
        return _PublicPage(public, locked)

    app = make_app(state, guarded)
    http = LocalServer(app, host, port, limit_concurrency=cfg.max_connections)
    engine.audit.append("ui_start", host=host, port=http.port, outcome="ok", token_required=require)
    return UiServer(state=state, app=app, http=http, token_required=require)
