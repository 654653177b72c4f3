"""A socket guard: inside ``offline()``, no connection may leave the machine.

It patches ``socket.socket.connect``/``connect_ex``/``sendto``, ``socket.create_connection``
and ``socket.getaddrinfo`` so that only loopback (127.0.0.0/8, ::1), Unix sockets and
numeric/localhost lookups pass; anything else raises :class:`NetworkBlocked` at once (no
packet is sent, no DNS query is made) and is recorded. ``raftsmith ask/chat/serve`` run
under it when ``chat.offline`` is true; the tests use it to prove a chat session stays local.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

_LOCK = threading.RLock()
_DEPTH = 0
_ORIG: dict[str, Any] = {}
_ACTIVE: list[GuardLog] = []
LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


class NetworkBlocked(PermissionError):
    """A non-loopback connection was attempted while raftsmith runs offline."""


@dataclass
class GuardLog:
    allowed: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


def is_loopback_host(host: Any) -> bool:
    """True only for a loopback name (localhost, ...) or address (127.0.0.0/8, ::1, ::ffff:127.x).

    ``""`` is not loopback: as a bind address it means every interface. An unknown or
    unresolvable name is not loopback either. ``None`` is, because that is what
    ``getaddrinfo(None, port)`` and ``connect`` resolve it to (the socket guard relies on it);
    callers that bind must treat a missing host themselves.
    """
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    h = str(host).strip().strip("[]").split("%", 1)[0]
    if not h:
        return False
    if h.lower().rstrip(".") in LOCAL_NAMES:
        return True
    try:
        ip = ipaddress.ip_address(h)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def is_loopback_url(url: str | None) -> bool:
    """True for a URL whose host is this machine; False for no URL or no host."""
    if not url:
        return False
    host = urlparse(url).hostname
    return bool(host) and is_loopback_host(host)


def _is_numeric(host: Any) -> bool:
    try:
        ipaddress.ip_address(str(host).strip("[]").split("%", 1)[0])
        return True
    except ValueError:
        return False


def _check(address: Any, family: int | None) -> None:
    if family is not None and family == getattr(socket, "AF_UNIX", -1):
        return
    if isinstance(address, (str, bytes)):  # AF_UNIX path
        return
    host = address[0] if isinstance(address, tuple) and address else address
    text = f"{host}:{address[1]}" if isinstance(address, tuple) and len(address) > 1 else str(host)
    if is_loopback_host(host):
        for log in _ACTIVE:
            log.allowed.append(text)
        return
    for log in _ACTIVE:
        log.refused.append(text)
    raise NetworkBlocked(
        f"raftsmith runs offline (chat.offline): the connection to {text} was refused by the network guard. "
        "Only loopback (127.0.0.1, ::1) is allowed; set chat.offline: false to allow network access."
    )


def _install() -> None:
    _ORIG.update(connect=socket.socket.connect, connect_ex=socket.socket.connect_ex, sendto=socket.socket.sendto,
                 create_connection=socket.create_connection, getaddrinfo=socket.getaddrinfo)

    def connect(self: socket.socket, address: Any) -> Any:
        _check(address, self.family)
        return _ORIG["connect"](self, address)

    def connect_ex(self: socket.socket, address: Any) -> Any:
        _check(address, self.family)
        return _ORIG["connect_ex"](self, address)

    def sendto(self: socket.socket, data: Any, *args: Any) -> Any:
        _check(args[-1], self.family)
        return _ORIG["sendto"](self, data, *args)

    def create_connection(address: Any, *args: Any, **kwargs: Any) -> Any:
        _check(address, None)
        return _ORIG["create_connection"](address, *args, **kwargs)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not (is_loopback_host(host) or _is_numeric(host)):
            _check((host, args[0] if args else None), None)
        return _ORIG["getaddrinfo"](host, *args, **kwargs)

    setattr(socket.socket, "connect", connect)  # noqa: B010 - patching on purpose
    setattr(socket.socket, "connect_ex", connect_ex)  # noqa: B010
    setattr(socket.socket, "sendto", sendto)  # noqa: B010
    setattr(socket, "create_connection", create_connection)  # noqa: B010
    setattr(socket, "getaddrinfo", getaddrinfo)  # noqa: B010


def _uninstall() -> None:
    for name in ("connect", "connect_ex", "sendto"):
        setattr(socket.socket, name, _ORIG[name])
    for name in ("create_connection", "getaddrinfo"):
        setattr(socket, name, _ORIG[name])
    _ORIG.clear()


@contextlib.contextmanager
def offline() -> Iterator[GuardLog]:
    """Refuse non-loopback connections for the duration; yields a log of allowed/refused attempts."""
    global _DEPTH
    log = GuardLog()
    with _LOCK:
        if _DEPTH == 0:
            _install()
        _DEPTH += 1
        _ACTIVE.append(log)
    try:
        yield log
    finally:
        with _LOCK:
            _ACTIVE.remove(log)
            _DEPTH -= 1
            if _DEPTH == 0:
                _uninstall()


@contextlib.contextmanager
def maybe_offline(enabled: bool) -> Iterator[GuardLog | None]:
    if not enabled:
        yield None
        return
    with offline() as log:
        yield log


def blocked_cause(err: BaseException | None) -> NetworkBlocked | None:
    """The NetworkBlocked behind a client library's connection error, if that is what it was."""
    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, NetworkBlocked):
            return err
        err = err.__cause__ or err.__context__
        seen += 1
    return None
