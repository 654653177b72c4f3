"""What the page adds to :mod:`rag.web.guard` (Host, Origin, JSON-only writes, body cap, bearer).

The guard lets a write through when it carries no Origin (SDK clients of ``serve`` send
none); the page's own calls always come from a browser, so here every write also needs:

* an ``Origin`` header (the guard has already checked that it is this server), and
* the page's per-run CSRF token in ``X-Raftsmith-Csrf``. The token is in the page's HTML,
  which another site cannot read; setting the header cross-site would need a CORS preflight,
  which gets no CORS headers back.

Every response also carries a strict Content-Security-Policy (scripts, styles and images
from this server only, no inline script or handler), so even a value that escaped escaping
would not run.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, MutableMapping
from typing import Any

from rag.web.guard import Rejection, error_body

__all__ = ["CSP", "CSRF_HEADER", "PageCsrf"]

CSRF_HEADER = "x-raftsmith-csrf"
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
           (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY"),
           (b"cross-origin-resource-policy", b"same-origin")]


class PageCsrf:
    """ASGI middleware: the CSRF token and Origin on writes, security headers on every response."""

    def __init__(self, app: Any, csrf_token: str, on_reject: Callable[[Rejection], None] | None = None):
        self.app = app
        self.csrf_token = csrf_token.encode()
        self.on_reject = on_reject

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope.get("method") in WRITE_METHODS:
            headers = dict((k.lower(), v) for k, v in scope.get("headers", []))
            if b"origin" not in headers:
                await self._refuse(scope, send, "no_origin", "Refused: a state-changing call must come from the page "
                                   "(no Origin header). Use the page in a browser.")
                return
            if not hmac.compare_digest(headers.get(CSRF_HEADER.encode(), b""), self.csrf_token):
                await self._refuse(scope, send, "bad_csrf", "Refused: the page's CSRF token is missing or stale; "
                                   "reload the page.")
                return

        async def with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)

    async def _refuse(self, scope: MutableMapping[str, Any], send: Any, reason: str, message: str) -> None:
        if self.on_reject is not None:
            client = scope.get("client")
            self.on_reject(Rejection(reason=reason, status=403, method=str(scope.get("method", "")),
                                     path=str(scope.get("path", ""))[:200], client=client[0] if client else None))
        body = error_body(403, message, code=reason)
        await send({"type": "http.response.start", "status": 403,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                *HEADERS]})
        await send({"type": "http.response.body", "body": body})
