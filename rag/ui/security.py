"""Request checks for the page, as one ASGI middleware.

* **Host** must be one this server answers to (``127.0.0.1:PORT``, ``localhost:PORT``...): a
  page on another site that rebinds its DNS name to 127.0.0.1 sends its own name and is refused.
* **State-changing calls** (every method but GET/HEAD) need the page's per-run CSRF token in
  ``X-Raftsmith-Csrf``, an ``Origin`` equal to this server's, a JSON body, and a body under
  :data:`MAX_BODY`. A cross-site form or ``fetch`` cannot read the token, cannot set the
  header without a CORS preflight (which gets no CORS headers back), and sends its own Origin.
* **Bearer token**: when the page listens beyond loopback, every ``/api/`` call also needs
  ``Authorization: Bearer <token>``.
* Every response carries a strict Content-Security-Policy (scripts and styles from this
  server only, no inline script), so even a value that escaped escaping would not run.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Iterable
from typing import Any

__all__ = ["CSRF_HEADER", "MAX_BODY", "PageGuard", "loopback_hosts"]

CSRF_HEADER = "x-raftsmith-csrf"
MAX_BODY = 64 * 1024
SAFE_METHODS = ("GET", "HEAD")
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
           (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY"),
           (b"cross-origin-resource-policy", b"same-origin")]


def loopback_hosts(port: int) -> set[str]:
    return {f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"}


class PageGuard:
    def __init__(self, app: Any, *, hosts: Iterable[str], csrf_token: str, bearer: str | None = None,
                 max_body: int = MAX_BODY):
        self.app = app
        self.hosts = {h.lower() for h in hosts}
        self.csrf_token = csrf_token
        self.bearer = bearer
        self.max_body = max_body

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        problem = self._problem(scope, headers)
        if problem is not None:
            await self._refuse(send, *problem)
            return

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + HEADERS
            await send(message)

        received = 0

        async def capped_receive() -> dict[str, Any]:
            nonlocal received
            message: dict[str, Any] = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise ValueError("request body over the limit")
            return message

        await self.app(scope, capped_receive, send_with_headers)

    def _problem(self, scope: dict[str, Any], headers: dict[str, str]) -> tuple[int, str] | None:
        host = headers.get("host", "").lower()
        if host not in self.hosts:
            return 421, (f"This server does not answer to the host name {host!r}; open it as "
                         f"http://{sorted(self.hosts)[0]}/ (a page that rebinds its DNS name here is refused).")
        path: str = scope.get("path", "")
        if self.bearer and path.startswith("/api/"):
            auth = headers.get("authorization", "")
            if not hmac.compare_digest(auth.encode(), f"Bearer {self.bearer}".encode()):
                return 401, "This page needs its access token: enter it on the page (Authorization: Bearer)."
        if scope["method"] in SAFE_METHODS:
            return None
        if headers.get("origin", "") != f"http://{host}":
            return 403, "Refused: a state-changing call must come from this page (Origin mismatch)."
        if not hmac.compare_digest(headers.get(CSRF_HEADER, "").encode(), self.csrf_token.encode()):
            return 403, "Refused: the page's CSRF token is missing or stale; reload the page."
        if headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            return 415, "Refused: send the request body as application/json."
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            return 400, "Bad Content-Length."
        if length > self.max_body:
            return 413, f"Refused: the request body is over {self.max_body} bytes."
        return None

    async def _refuse(self, send: Any, status: int, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                *HEADERS]})
        await send({"type": "http.response.body", "body": body})
