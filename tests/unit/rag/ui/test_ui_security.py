"""The page's request checks (rag.ui.security) in front of a real Starlette app, through httpx."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("starlette")

from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from rag.ui.security import CSRF_HEADER, MAX_BODY, PageGuard, loopback_hosts  # noqa: E402

PORT = 8765
ORIGIN = f"http://127.0.0.1:{PORT}"
TOKEN = "csrf-token-for-the-test"


def _client(bearer: str | None = None, hosts: set[str] | None = None) -> tuple[TestClient, list[dict]]:
    seen: list[dict] = []

    async def echo(request: Request) -> JSONResponse:
        body = await request.body()
        seen.append({"method": request.method, "body": body})
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/api/thing", echo, methods=["GET", "POST"]), Route("/", echo)])
    guard = PageGuard(app, hosts=hosts or loopback_hosts(PORT), csrf_token=TOKEN, bearer=bearer)
    return TestClient(guard, base_url=ORIGIN), seen


def _post(client: TestClient, headers: dict[str, str] | None = None, body: bytes = b'{"a": 1}'):  # type: ignore[no-untyped-def]
    h = {"Origin": ORIGIN, CSRF_HEADER: TOKEN, "Content-Type": "application/json"} | (headers or {})
    return client.post("/api/thing", content=body, headers={k: v for k, v in h.items() if v is not None})


def test_a_proper_call_passes_and_carries_the_security_headers() -> None:
    client, seen = _client()
    r = _post(client)
    assert r.status_code == 200 and seen == [{"method": "POST", "body": b'{"a": 1}'}]
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert client.get("/").status_code == 200


def test_dns_rebinding_host_is_refused_before_the_app_runs() -> None:
    client, seen = _client()
    r = client.get("/api/thing", headers={"Host": f"attacker.example:{PORT}"})
    assert r.status_code == 421 and "does not answer to the host name" in r.json()["error"]
    assert "127.0.0.1" in r.json()["error"]
    r = _post(client, {"Host": f"attacker.example:{PORT}", "Origin": f"http://attacker.example:{PORT}"})
    assert r.status_code == 421
    assert seen == []


@pytest.mark.parametrize(("headers", "status", "words"), [
    ({CSRF_HEADER: None}, 403, "CSRF token"),
    ({CSRF_HEADER: "a-guessed-token"}, 403, "CSRF token"),
    ({"Origin": None}, 403, "Origin"),
    ({"Origin": "http://evil.example"}, 403, "Origin"),
    ({"Origin": "http://localhost:8765"}, 403, "Origin"),  # another loopback name is another origin
    ({"Content-Type": "application/x-www-form-urlencoded"}, 415, "application/json"),
    ({"Content-Type": "text/plain"}, 415, "application/json"),
])
def test_state_changing_calls_need_token_origin_and_json(headers: dict, status: int, words: str) -> None:
    client, seen = _client()
    r = _post(client, headers)
    assert r.status_code == status and words in r.json()["error"]
    assert seen == []  # the handler never ran


def test_body_over_the_cap_is_refused() -> None:
    client, seen = _client()
    big = json.dumps({"question": "x" * (MAX_BODY + 10)}).encode()
    r = _post(client, body=big)
    assert r.status_code == 413 and str(MAX_BODY) in r.json()["error"]
    assert seen == []


def test_bearer_token_when_served_beyond_loopback() -> None:
    hosts = loopback_hosts(PORT) | {f"10.0.0.5:{PORT}"}
    client, seen = _client(bearer="s3cret-bearer-token-123", hosts=hosts)
    assert client.get("/api/thing").status_code == 401
    assert client.get("/api/thing", headers={"Authorization": "Bearer wrong"}).status_code == 401
    ok = client.get("/api/thing", headers={"Authorization": "Bearer s3cret-bearer-token-123"})
    assert ok.status_code == 200 and len(seen) == 1
    assert client.get("/").status_code == 200  # the page itself holds no data; its API calls do
    r = client.get("/api/thing")
    assert "s3cret" not in r.text  # the token is never echoed
