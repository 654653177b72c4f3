"""Bind and run the page: loopback by default, anything else only with ``allow_remote`` and a token.

The socket is bound before the app is built, so the Host check knows the real port (also
for port 0, which tests use). uvicorn serves the app on that socket.
"""

from __future__ import annotations

import logging
import socket
import threading
from dataclasses import dataclass
from typing import Any

from rag.answer import Answerer
from rag.config import Workspace
from rag.errors import ConfigError
from rag.netguard import is_loopback_host
from rag.ui.app import UiState, make_app
from rag.ui.security import PageGuard, loopback_hosts

log = logging.getLogger(__name__)

__all__ = ["TOKEN_NAME", "UiServer", "make_ui_server"]

TOKEN_NAME = "ui-token"  # keyring user name of the bearer token for a non-loopback page
TOKEN_ENV = "RAFTSMITH_UI_TOKEN"
MIN_TOKEN_CHARS = 16


@dataclass
class UiServer:
    state: UiState
    sock: socket.socket
    app: Any
    host: str
    port: int
    _server: Any = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        name = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{name}:{self.port}/"

    def _uvicorn(self) -> Any:
        import uvicorn

        config = uvicorn.Config(self.app, log_level="warning", lifespan="on", access_log=False,
                                timeout_graceful_shutdown=2)
        self._server = uvicorn.Server(config)
        return self._server

    def serve_forever(self) -> None:
        self._uvicorn().run(sockets=[self.sock])

    def start(self) -> None:
        """Serve from a background thread (tests, benchmarks); returns once it accepts requests."""
        import time

        server = self._uvicorn()
        self._thread = threading.Thread(target=server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ConfigError("The page's server did not start; rerun with -vv to see why.")
            time.sleep(0.02)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.sock.close()
        self.state.engine.close()


def _token(explicit: str | None) -> str:
    from rag.secrets import get_key

    token = get_key(TOKEN_NAME, explicit=explicit, env_var=TOKEN_ENV, required=False)
    if not token:
        raise ConfigError(f"A page reachable beyond this machine needs an access token: store one with "
                          f"'raftsmith keys set {TOKEN_NAME}' (or set ${TOKEN_ENV}), then run again with --allow-remote.")
    if len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(f"The page's access token is shorter than {MIN_TOKEN_CHARS} characters; store a longer one "
                          f"with 'raftsmith keys set {TOKEN_NAME}'.")
    return token


def make_ui_server(ws: Workspace, host: str = "127.0.0.1", port: int = 8765, *, allow_remote: bool = False,
                   token: str | None = None, model: str = "tuned", rag: bool = True,
                   max_tokens: int | None = None) -> UiServer:
    """Bind the socket and build the app (nothing served until ``serve_forever`` or ``start``)."""
    loopback = is_loopback_host(host)
    if not loopback and not allow_remote:
        raise ConfigError(f"Refusing to serve the page on {host}: it shows your documents and answers questions. "
                          "Use --host 127.0.0.1, or pass --allow-remote with an access token if you mean it.")
    bearer = None if loopback else _token(token)
    engine = Answerer(ws)
    engine.audit.check_writable()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise ConfigError(f"Cannot listen on {host}:{port} ({err.strerror or err}); pick another --port.") from None
    sock.listen(64)
    real_port = int(sock.getsockname()[1])
    hosts = loopback_hosts(real_port) | ({f"{host}:{real_port}"} if not loopback else set())
    state = UiState(ws=ws, engine=engine, model=model, rag=rag, max_tokens=max_tokens)
    app = make_app(state, lambda inner: PageGuard(inner, hosts=hosts, csrf_token=state.csrf_token, bearer=bearer))
    engine.audit.append("ui_start", host=host, port=real_port, outcome="ok", remote=not loopback)
    return UiServer(state=state, sock=sock, app=app, host=host, port=real_port)
