"""The page's request checks: rag.web.guard around rag.ui.security, on the real app, through httpx.

No model runs here: the refused calls never reach the Answerer, and the accepted ones are
the views that read files (status, report) or fail on bad input before any generation.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette")

from starlette.testclient import TestClient  # noqa: E402

from rag.config import init_workspace  # noqa: E402
from rag.errors import ConfigError  # noqa: E402
from rag.ui.security import CSRF_HEADER  # noqa: E402
from rag.ui.server import UiServer, make_ui_server  # noqa: E402


@pytest.fixture
def ui(tmp_path: Path) -> Iterator[tuple[UiServer, TestClient, str]]:
    ws = init_workspace(tmp_path / "ws")
    server = make_ui_server(ws, port=0)
    origin = f"http://127.0.0.1:{server.http.port}"
    yield server, TestClient(server.app, base_url=origin), origin
    server.close()


def _audit(server: UiServer) -> list[dict[str, Any]]:
    return [json.loads(x) for x in server.state.ws.audit_path.read_text().splitlines()]


def _post(client: TestClient, origin: str, token: str, path: str = "/api/switch", body: bytes = b'{"model": "nope"}',
          **headers: str | None) -> Any:
    h = {"Origin": origin, CSRF_HEADER: token, "Content-Type": "application/json"} | headers
    return client.post(path, content=body, headers={k: v for k, v in h.items() if v is not None})


def test_the_page_carries_its_csrf_token_and_a_strict_csp(ui: tuple[UiServer, TestClient, str]) -> None:
    server, client, _ = ui
    r = client.get("/")
    assert r.status_code == 200 and f'content="{server.state.csrf_token}"' in r.text
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert "<script src=\"/static/app.js\"" in r.text and "http" not in r.text.split("<body")[0].replace("http-equiv", "")
    assert client.get("/static/app.js").status_code == 200
    assert _audit(server)[-1]["event"] == "ui_start"


def test_a_proper_call_passes_and_bad_input_is_a_clear_400(ui: tuple[UiServer, TestClient, str]) -> None:
    server, client, origin = ui
    r = _post(client, origin, server.state.csrf_token)
    assert r.status_code == 400 and "Unknown model 'nope'" in r.json()["error"]["message"]
    r = _post(client, origin, server.state.csrf_token, "/api/ask", b'{"question": "  "}')
    assert r.status_code == 400 and "question is empty" in r.json()["error"]["message"]
    r = _post(client, origin, server.state.csrf_token, "/api/ask", b"[1, 2]")
    assert r.status_code == 400 and "JSON object" in r.json()["error"]["message"]


def test_dns_rebinding_host_is_refused_and_audited(ui: tuple[UiServer, TestClient, str]) -> None:
    server, client, origin = ui
    port = server.http.port
    r = client.get("/api/status", headers={"Host": f"attacker.example:{port}"})
    assert r.status_code == 421
    r = _post(client, f"http://attacker.example:{port}", server.state.csrf_token, Host=f"attacker.example:{port}")
    assert r.status_code == 421
    rec = _audit(server)[-1]
    assert rec["event"] == "ui_request" and rec["outcome"] == "rejected" and rec["reason"] == "bad_host"


@pytest.mark.parametrize(("headers", "status", "reason"), [
    ({CSRF_HEADER: None}, 403, "bad_csrf"),
    ({CSRF_HEADER: "a-guessed-token"}, 403, "bad_csrf"),
    ({"Origin": None}, 403, "no_origin"),
    ({"Origin": "http://evil.example"}, 403, "bad_origin"),
    ({"Content-Type": "application/x-www-form-urlencoded"}, 415, "bad_content_type"),
    ({"Content-Type": "text/plain"}, 415, "bad_content_type"),
])
def test_state_changing_calls_need_token_origin_and_json(ui: tuple[UiServer, TestClient, str], headers: dict,
                                                         status: int, reason: str) -> None:
    server, client, origin = ui
    before = server.state.model
    r = _post(client, origin, server.state.csrf_token, body=b'{"model": "base"}', **headers)
    assert r.status_code == status and r.json()["error"]["code"] == reason
    assert server.state.model == before  # the switch never happened
    rec = _audit(server)[-1]
    assert rec["event"] == "ui_request" and rec["reason"] == reason and "model_switch" not in [x["event"] for x in _audit(server)]


def test_body_over_the_cap_is_refused(ui: tuple[UiServer, TestClient, str]) -> None:
    server, client, origin = ui
    cap = server.state.ws.config.serve.max_body_kb * 1024
    big = json.dumps({"question": "x" * cap}).encode()
    r = _post(client, origin, server.state.csrf_token, "/api/ask", big)
    assert r.status_code == 413 and _audit(server)[-1]["reason"] == "body_too_large"


def test_no_file_outside_the_workspace_is_served(ui: tuple[UiServer, TestClient, str], tmp_path: Path) -> None:
    _, client, _ = ui
    (tmp_path / "secret.txt").write_text("TOP SECRET")
    for path in ("/static/../../../secret.txt", "/static/%2e%2e/%2e%2e/secret.txt", "/api/chunk/..%2f..%2fsecret.txt",
                 "/api/report/chart.png", "/api/chunk/not-a-chunk"):
        r = client.get(path)
        assert r.status_code == 404 and "TOP SECRET" not in r.text, path


def test_non_loopback_needs_allow_remote_then_the_bearer_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ws = init_workspace(tmp_path / "ws")
    with pytest.raises(ConfigError, match="--allow-remote"):
        make_ui_server(ws, host="0.0.0.0", port=0)
    with pytest.raises(ConfigError, match="--allow-remote"):
        make_ui_server(ws, host="", port=0)  # every interface, spelled empty
    monkeypatch.setenv("RAFTSMITH_SERVE_TOKEN", "a-long-random-token-for-the-test-0123")
    server = make_ui_server(ws, host="0.0.0.0", port=0, allow_remote=True)
    try:
        client = TestClient(server.app, base_url=f"http://127.0.0.1:{server.http.port}")
        assert client.get("/").status_code == 200  # the page itself holds no data
        assert client.get("/static/app.css").status_code == 200
        r = client.get("/api/status")
        assert r.status_code == 401 and "a-long-random" not in r.text
        assert client.get("/api/status", headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = client.get("/api/status", headers={"Authorization": "Bearer a-long-random-token-for-the-test-0123"})
        assert ok.status_code == 200 and ok.json()["audit"]["ok"] is True
        assert "a-long-random" not in server.state.ws.audit_path.read_text()  # never logged
    finally:
        server.close()
