"""rag.web.guard on a real uvicorn server (ephemeral port), hit with httpx and raw sockets.

The app behind the guard echoes what it received, so each test shows both that a hostile
request is refused with a clear JSON error and that a good one reaches the app unchanged.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator

import httpx
import pytest

from rag.web.guard import GuardMiddleware, GuardPolicy, Rejection, error_body, scrub
from rag.web.runner import LocalServer

TOKEN = "t0k3n-for-tests-only-0123456789abcdef"


def _echo_app():  # type: ignore[no-untyped-def]
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def echo(request: Request) -> JSONResponse:
        body = await request.body()
        return JSONResponse({"method": request.method, "len": len(body), "head": body[:20].decode("latin-1")})

    return Starlette(routes=[Route("/echo", echo, methods=["GET", "POST"])])


class Running:
    def __init__(self, policy: GuardPolicy) -> None:
        self.rejections: list[Rejection] = []
        self.server = LocalServer(GuardMiddleware(_echo_app(), policy, on_reject=self.rejections.append),
                                  "127.0.0.1", 0)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = self.server.url
        for _ in range(200):  # wait until uvicorn accepts
            try:
                httpx.get(self.url + "/echo", timeout=1)
                break
            except httpx.TransportError:
                threading.Event().wait(0.05)
        self.rejections.clear()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def open_server() -> Iterator[Running]:
    r = Running(GuardPolicy(host="127.0.0.1", token=TOKEN, max_body_bytes=4096))
    yield r
    r.stop()


@pytest.fixture(scope="module")
def token_server() -> Iterator[Running]:
    r = Running(GuardPolicy(host="127.0.0.1", token=TOKEN, require_token=True, max_body_bytes=4096))
    yield r
    r.stop()


@pytest.fixture(autouse=True)
def _fresh_rejections(request: pytest.FixtureRequest) -> None:
    for name in ("open_server", "token_server"):
        if name in request.fixturenames:
            request.getfixturevalue(name).rejections.clear()


def _raw(url: str, request: bytes) -> tuple[int, bytes]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


def _err(resp: httpx.Response) -> dict:
    assert resp.headers["content-type"] == "application/json"
    return resp.json()["error"]


def test_good_json_post_reaches_the_app(open_server: Running) -> None:
    r = httpx.post(open_server.url + "/echo", json={"a": 1})
    assert r.status_code == 200 and r.json()["method"] == "POST"
    assert json.loads(r.json()["head"]) == {"a": 1}
    same_origin = httpx.post(open_server.url + "/echo", json={}, headers={"Origin": open_server.url})
    assert same_origin.status_code == 200
    assert open_server.rejections == []


def test_dns_rebinding_host_is_refused(open_server: Running) -> None:
    port = open_server.url.rsplit(":", 1)[1]
    for host in (f"attacker.example:{port}", "attacker.example", "127.0.0.1.nip.io", "", "bad host:xx"):
        r = httpx.get(open_server.url + "/echo", headers={"Host": host})
        assert r.status_code in (421, 400), host
        if r.status_code == 421:
            assert "Host header refused" in _err(r)["message"]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
        assert httpx.get(open_server.url + "/echo", headers={"Host": host}).status_code == 200, host
    assert {x.reason for x in open_server.rejections} == {"bad_host"}


def test_cross_origin_text_plain_post_is_refused(open_server: Running) -> None:
    # what a page on another site can send without a CORS preflight
    r = httpx.post(open_server.url + "/echo", content=b'{"messages": []}',
                   headers={"Content-Type": "text/plain", "Origin": "http://attacker.example"})
    assert r.status_code == 403 and _err(r)["code"] == "bad_origin"
    # same request from no page at all: still refused, for the content type
    r = httpx.post(open_server.url + "/echo", content=b'{"messages": []}', headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and "application/json" in _err(r)["message"]
    for origin in ("null", "http://127.0.0.1:1", "file://", open_server.url + "/x"):
        r = httpx.post(open_server.url + "/echo", json={}, headers={"Origin": origin})
        assert r.status_code == 403, origin
    r = httpx.post(open_server.url + "/echo", json={}, headers={"Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403
    reasons = [x.reason for x in open_server.rejections]
    assert reasons.count("bad_origin") == 6 and reasons.count("bad_content_type") == 1


def test_oversize_body_is_refused_declared_or_streamed(open_server: Running) -> None:
    r = httpx.post(open_server.url + "/echo", content=b"{" + b" " * 5000 + b"}",
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "4096-byte limit" in _err(r)["message"]

    def chunks() -> Iterator[bytes]:  # chunked: no Content-Length, the guard must count
        for _ in range(10):
            yield b" " * 1000

    r = httpx.post(open_server.url + "/echo", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert [x.reason for x in open_server.rejections] == ["body_too_large", "body_too_large"]
    ok = httpx.post(open_server.url + "/echo", content=b" " * 4096, headers={"Content-Type": "application/json"})
    assert ok.status_code == 200 and ok.json()["len"] == 4096


@pytest.mark.parametrize("value", [b"-1", b"abc", b"1e3", b"99999999999999999999999"])
def test_garbage_content_length_is_a_400(open_server: Running, value: bytes) -> None:
    port = open_server.url.rsplit(":", 1)[1]
    req = (b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1:" + port.encode() + b"\r\nContent-Type: application/json\r\n"
           b"Content-Length: " + value + b"\r\nConnection: close\r\n\r\n{}")
    status, body = _raw(open_server.url, req)
    assert status in (400, 413)  # uvicorn's HTTP parser may refuse first; either way, no answer
    assert b"echo" not in body and b'"method"' not in body


def test_token_optional_when_not_required(open_server: Running) -> None:
    # OpenAI SDKs always send some key; on loopback a placeholder must work
    for auth in (None, f"Bearer {TOKEN}", "Bearer unused"):
        headers = {"Authorization": auth} if auth else {}
        assert httpx.get(open_server.url + "/echo", headers=headers).status_code == 200
    assert open_server.rejections == []


def test_token_required(token_server: Running) -> None:
    r = httpx.post(token_server.url + "/echo", json={})
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert "required" in _err(r)["message"]
    wrong = httpx.post(token_server.url + "/echo", json={}, headers={"Authorization": "Bearer wrong"})
    assert wrong.status_code == 401 and "wrong" in _err(wrong)["message"] and TOKEN not in wrong.text
    for bad in ("Bearer", "Basic " + TOKEN, TOKEN, "Bearer " + TOKEN[:-1]):
        assert httpx.post(token_server.url + "/echo", json={}, headers={"Authorization": bad}).status_code == 401
    ok = httpx.post(token_server.url + "/echo", json={}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200
    assert all(x.reason == "unauthorized" for x in token_server.rejections)
    assert TOKEN not in repr(token_server.rejections)


def test_wildcard_bind_accepts_ip_literals_not_names() -> None:
    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    guard = GuardMiddleware(app, GuardPolicy(host="0.0.0.0", token=TOKEN, require_token=True),)
    transport = httpx.ASGITransport(app=guard)  # type: ignore[arg-type]

    async def go(host: str) -> int:
        async with httpx.AsyncClient(transport=transport, base_url="http://x") as c:
            r = await c.get("/", headers={"Host": host, "Authorization": f"Bearer {TOKEN}"})
            return r.status_code

    import anyio

    assert anyio.run(go, "192.168.1.20:8080") == 204
    assert anyio.run(go, "rebind.attacker.example:8080") == 421


def test_require_token_without_one_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        GuardPolicy(host="127.0.0.1", require_token=True)


def test_error_body_and_scrub(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ws = tmp_path / "secret-project"
    msg = f"The audit log {ws}/.raftsmith/audit.jsonl cannot be written"
    assert str(tmp_path) not in scrub(msg, [ws]) and "<workspace>/.raftsmith/audit.jsonl" in scrub(msg, [ws])
    assert json.loads(error_body(400, "bad")) == {"error": {"message": "bad", "type": "invalid_request_error", "code": 400}}
