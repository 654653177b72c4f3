"""Run an ASGI app under uvicorn on a socket bound up front (so port 0 and bind errors are known).

:class:`LocalServer` binds at construction, then :meth:`LocalServer.serve_forever` runs
uvicorn on that socket until :meth:`LocalServer.shutdown` (from another thread) or Ctrl-C.
Tests run it in a thread on an ephemeral port; ``raftsmith serve`` runs it in the foreground.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

from rag.errors import ConfigError

__all__ = ["LocalServer"]


class LocalServer:
    """An ASGI app served by uvicorn on ``host:port`` with a real listen backlog."""

    def __init__(self, app: Any, host: str, port: int, *, backlog: int = 128,
                 limit_concurrency: int | None = None, timeout_keep_alive: int = 5) -> None:
        import uvicorn

        self.host = host
        self._sock = _bind(host, port, backlog)
        self.port = int(self._sock.getsockname()[1])
        config = uvicorn.Config(app, log_level="warning", access_log=False, backlog=backlog,
                                limit_concurrency=limit_concurrency, timeout_keep_alive=timeout_keep_alive,
                                server_header=False, lifespan="off", ws="none")
        self._server = uvicorn.Server(config)
        self._stopped = threading.Event()

    @property
    def url(self) -> str:
        name = f"[{self.host}]" if ":" in self.host else (self.host or "0.0.0.0")
        return f"http://{name}:{self.port}"

    def serve_forever(self) -> None:
        """Serve until :meth:`shutdown` (or SIGINT/SIGTERM when run in the main thread)."""
        try:
            self._server.run(sockets=[self._sock])
        finally:
            self._stopped.set()

    def shutdown(self, timeout: float = 30.0) -> None:
        """Ask the server to stop (in-flight requests finish) and wait for it."""
        self._server.should_exit = True
        if self._server.started:
            self._stopped.wait(timeout)

    def server_close(self) -> None:
        self._sock.close()


def _bind(host: str, port: int, backlog: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise ConfigError(f"Cannot listen on {host!r}: the name does not resolve ({err.strerror}); "
                          "use --host 127.0.0.1 or an address of this machine.") from None
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(addr)
        sock.listen(backlog)
        sock.set_inheritable(True)
    except OSError as err:
        sock.close()
        raise ConfigError(f"Cannot listen on {host}:{port} ({err.strerror or err}); pick another --port.") from None
    return sock
