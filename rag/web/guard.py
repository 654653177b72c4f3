"""Request guard for raftsmith's local web endpoints (``serve``, the web page): pure ASGI.

A page open in the user's browser can reach a server on 127.0.0.1. This middleware stops it
from using one, before the application sees the request:

* **Host** must be a loopback name or address, the bound host, or one of ``extra_hosts``.
  A DNS-rebinding page sends its own name (``attacker.example``) and is refused. When bound
  to a wildcard address (``0.0.0.0``, ``::``) an IP-literal Host is accepted too: a literal
  cannot be rebound.
* **Origin**, when a browser sends one, must be exactly this server (``http://<Host>``).
  ``Sec-Fetch-Site: cross-site`` is refused as well. Absent Origin (curl, SDKs) passes.
* **POST/PUT/PATCH/DELETE** need ``Content-Type: application/json``: a cross-site form or a
  ``text/plain`` fetch (which a browser sends without a CORS preflight) is refused with 415.
* **Body size**: the body is read here, counted as it streams, and refused with 413 past
  ``max_body_bytes``; a ``Content-Length`` that is not a plain non-negative number is a 400.
  The application receives the buffered body unchanged.
* **Bearer token**: with ``require_token`` every request needs ``Authorization: Bearer
  <token>`` (401 otherwise). Without it the header is not checked: OpenAI SDKs insist on
  sending some key, and on loopback any placeholder must work.

Refusals are JSON in the OpenAI error shape, ``{"error": {"message", "type", "code"}}``,
and each is reported once to ``on_reject`` (for the audit log) as a :class:`Rejection`
that carries a reason code, never the token or the body.

Use::

    app = GuardMiddleware(starlette_app, GuardPolicy(host="127.0.0.1", token=tok), on_reject=cb)

Helpers: :func:`error_body` (the error JSON), :func:`scrub` (strip local paths from a
message before it leaves the machine), :func:`serve_token` (the keyring-kept token).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import re
import secrets
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rag.netguard import is_loopback_host

__all__ = [
    "TOKEN_ENV",
    "TOKEN_NAME",
    "GuardMiddleware",
    "GuardPolicy",
    "Rejection",
    "error_body",
    "scrub",
    "serve_token",
]

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: keyring user name (service ``raftsmith``) of the bearer token, and the env var that overrides it
TOKEN_NAME = "serve-token"
TOKEN_ENV = "RAFTSMITH_SERVE_TOKEN"
_WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_DIGITS = re.compile(rb"[0-9]{1,18}")


@dataclass(frozen=True)
class GuardPolicy:
    """What the guard lets through. ``host`` is the address the server is bound to."""

    host: str
    token: str | None = None
    require_token: bool = False
    max_body_bytes: int = 1 << 20
    extra_hosts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.require_token and not self.token:
            raise ValueError("require_token needs a token")


@dataclass(frozen=True)
class Rejection:
    """One refused request: ``reason`` is a stable code (bad_host, bad_origin, ...)."""

    reason: str
    status: int
    method: str
    path: str
    client: str | None


def error_body(status: int, message: str, kind: str = "invalid_request_error", code: str | None = None) -> bytes:
    """The OpenAI-style error JSON that every refusal uses."""
    return json.dumps({"error": {"message": message, "type": kind, "code": code or status}}).encode()


def scrub(text: str, roots: Iterable[str | os.PathLike[str]] = ()) -> str:
    """``text`` with each of ``roots`` (and the home folder) replaced by a placeholder."""
    pairs = [(str(Path(r)), "<workspace>") for r in roots if str(r)]
    home = os.path.expanduser("~")
    if home and home != "/":
        pairs.append((home, "~"))
    for old, new in sorted(pairs, key=lambda p: -len(p[0])):
        text = text.replace(old, new)
    return text


def serve_token(*, required: bool) -> str | None:
    """The server's bearer token: ``$RAFTSMITH_SERVE_TOKEN``, else the keyring, created on first use.

    With no usable keyring: raises :class:`~rag.errors.KeyringUnavailable` (naming the fix)
    when ``required``, else returns None (loopback runs without a token).
    """
    from rag.errors import KeyringUnavailable
    from rag.secrets import get_key, set_key

    try:
        token = get_key(TOKEN_NAME, env_var=TOKEN_ENV, required=False)
        if token:
            return token
        token = secrets.token_urlsafe(32)
        set_key(TOKEN_NAME, token)
        log.info("created a new serve token in the keyring (raftsmith/%s)", TOKEN_NAME)
        return token
    except KeyringUnavailable as err:
        if required:
            raise KeyringUnavailable(
                f"A non-loopback server needs a bearer token, and none could be kept: {err} "
                f"Or set {TOKEN_ENV} to a long random value."
            ) from None
        log.info("no usable keyring: serving on loopback without a token")
        return None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
        return True
    except ValueError:
        return False


def _split_host(value: str) -> str | None:
    """The host part of a Host header value (``name``, ``name:port``, ``[v6]:port``)."""
    try:
        parts = urlsplit("//" + value)
        host = parts.hostname
        _ = parts.port  # raises ValueError for a non-numeric port
    except ValueError:
        return None
    return host or None


class GuardMiddleware:
    """Pure ASGI middleware enforcing a :class:`GuardPolicy` on every HTTP request."""

    def __init__(self, app: ASGIApp, policy: GuardPolicy,
                 on_reject: Callable[[Rejection], None] | None = None) -> None:
        self.app = app
        self.policy = policy
        self.on_reject = on_reject
        bound = policy.host.strip("[]").lower()
        self._wildcard = bound in ("0.0.0.0", "::", "")
        self._hosts = {h.lower() for h in policy.extra_hosts}
        if bound and not self._wildcard:
            self._hosts.add(bound)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: dict[bytes, bytes] = {}
        for k, v in scope.get("headers", []):
            headers.setdefault(k.lower(), v)
        refusal = self._check_headers(scope, headers)
        if refusal is not None:
            await self._refuse(scope, send, *refusal)
            return
        if scope.get("method", "GET") in _WRITE_METHODS or b"content-length" in headers \
                or b"transfer-encoding" in headers:
            body_or_refusal = await self._read_body(receive, headers)
            if not isinstance(body_or_refusal, bytes):
                await self._refuse(scope, send, *body_or_refusal)
                return
            receive = _replay(body_or_refusal, receive)
        await self.app(scope, receive, send)

    def _host_ok(self, host: str) -> bool:
        h = host.lower()
        if is_loopback_host(h) or h in self._hosts:
            return True
        return self._wildcard and _is_ip(h)

    def _check_headers(self, scope: Scope, headers: dict[bytes, bytes]) -> tuple[str, int, str] | None:
        raw_host = headers.get(b"host", b"").decode("latin-1").strip()
        host = _split_host(raw_host) if raw_host else None
        if host is None or not self._host_ok(host):
            return ("bad_host", 421, "This server answers only for its own address (Host header refused); "
                    "connect to http://127.0.0.1:<port> or add the name to serve.allowed_hosts.")
        origin = headers.get(b"origin")
        if origin is not None:
            o = origin.decode("latin-1").strip()
            parts = urlsplit(o)
            if parts.scheme not in ("http", "https") or parts.netloc.lower() != raw_host.lower() \
                    or parts.path not in ("", "/"):
                return ("bad_origin", 403, "Cross-origin requests are refused: a web page from another site "
                        "may not use this server.")
        if headers.get(b"sec-fetch-site", b"").lower() == b"cross-site":
            return ("bad_origin", 403, "Cross-site requests are refused: a web page from another site may not "
                    "use this server.")
        auth = headers.get(b"authorization")
        if self.policy.require_token:
            given = _bearer(auth)
            expected = (self.policy.token or "").encode()
            if given is None or not expected or not hmac.compare_digest(given, expected):
                why = "a bearer token is required" if auth is None else "the bearer token is wrong"
                return ("unauthorized", 401, f"Unauthorized: {why}. Send 'Authorization: Bearer <token>' with the "
                        "token kept in the keyring (raftsmith/serve-token) or in $RAFTSMITH_SERVE_TOKEN.")
        if scope.get("method", "GET") in _WRITE_METHODS:
            ctype = headers.get(b"content-type", b"").split(b";", 1)[0].strip().lower()
            if ctype != b"application/json":
                return ("bad_content_type", 415, "Send the request body as JSON with 'Content-Type: "
                        "application/json'.")
        return None

    async def _read_body(self, receive: Receive, headers: dict[bytes, bytes]) -> bytes | tuple[str, int, str]:
        cap = self.policy.max_body_bytes
        too_big = ("body_too_large", 413, f"The request body is over the {cap}-byte limit (serve.max_body_kb); "
                   "send a shorter conversation.")
        declared = headers.get(b"content-length")
        if declared is not None:
            if not _DIGITS.fullmatch(declared.strip()):
                return ("bad_content_length", 400, "The Content-Length header is not a non-negative number.")
            if int(declared) > cap:
                return too_big
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return ("client_gone", 400, "The client disconnected before sending the whole body.")
            data = message.get("body", b"")
            total += len(data)
            if total > cap:
                return too_big
            chunks.append(data)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _refuse(self, scope: Scope, send: Send, reason: str, status: int, message: str) -> None:
        if self.on_reject is not None:
            client = scope.get("client")
            rej = Rejection(reason=reason, status=status, method=str(scope.get("method", "")),
                            path=str(scope.get("path", ""))[:200], client=client[0] if client else None)
            try:
                self.on_reject(rej)
            except Exception:  # noqa: BLE001 - a failing recorder must not turn a refusal into a 500
                log.exception("recording a refused request failed")
        if reason == "client_gone":
            return
        body = error_body(status, message, "authentication_error" if status == 401 else "invalid_request_error",
                          reason)
        hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff"),
                (b"connection", b"close")]
        if status == 401:
            hdrs.append((b"www-authenticate", b'Bearer realm="raftsmith"'))
        await send({"type": "http.response.start", "status": status, "headers": hdrs})
        await send({"type": "http.response.body", "body": body})


def _bearer(value: bytes | None) -> bytes | None:
    if value is None:
        return None
    scheme, _, token = value.strip().partition(b" ")
    if scheme.lower() != b"bearer" or not token.strip():
        return None
    return token.strip()


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that yields the buffered body once, then defers to the real one (disconnects)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
