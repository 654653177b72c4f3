"""``raftsmith ui`` loads the embedder, index and model before the first question (no browser needed)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import httpx
import pytest
from _runtime_ws import make_workspace

from rag.config import load_workspace

pytestmark = pytest.mark.integration

Q = "Which TCP port does the Kestrel KX-7 relay listen on by default for sensor ingest?"


def _ask(server: object, question: str, model: str) -> list[dict]:
    from rag.ui.security import CSRF_HEADER

    origin = f"http://127.0.0.1:{server.http.port}"  # type: ignore[attr-defined]
    headers = {"Origin": origin, CSRF_HEADER: server.state.csrf_token, "Content-Type": "application/json"}  # type: ignore[attr-defined]
    with httpx.Client(base_url=origin, timeout=600) as client:
        resp = client.post("/api/ask", headers=headers, content=json.dumps({"question": question, "model": model, "rag": True}))
    resp.raise_for_status()
    return [json.loads(line) for line in resp.text.splitlines()]


def test_warm_up_loads_what_the_first_answer_uses(tmp_path: Path) -> None:
    from rag.ui.server import make_ui_server

    ws = load_workspace(make_workspace(tmp_path / "ws") / "raftsmith.yaml")
    server = make_ui_server(ws, port=0, model="base", max_tokens=8)
    server.start()
    try:
        engine = server.state.engine
        assert engine._retriever is None and not engine._backends  # nothing loaded by building the server
        server.warm_up().join(timeout=600)
        retriever, backends = engine._retriever, dict(engine._backends)
        assert retriever is not None and retriever._embedder is not None
        assert [key[1] for key in backends] == ["base"]
        events = _ask(server, Q, "base")
        assert events[-1]["type"] == "done" and events[-1]["result"]["model"]
        assert sum(e["type"] == "token" for e in events) >= 1
        # the answer used what the warm-up loaded: nothing was loaded a second time
        assert engine._retriever is retriever and retriever._embedder is not None
        assert {k: id(v[1]) for k, v in engine._backends.items()} == {k: id(v[1]) for k, v in backends.items()}
    finally:
        server.stop()


def test_a_warm_up_that_fails_only_logs_and_the_question_gets_the_fix(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from rag.ui.server import make_ui_server

    ws = load_workspace(make_workspace(tmp_path / "ws") / "raftsmith.yaml")
    server = make_ui_server(ws, port=0, model="tuned", max_tokens=8)  # no export in this workspace
    server.start()
    try:
        with caplog.at_level(logging.WARNING, logger="rag.ui.server"):
            server.warm_up().join(timeout=600)
        assert "could not load the models ahead of the first question" in caplog.text
        events = _ask(server, Q, "tuned")
        assert events[-1]["type"] == "error" and "export" in events[-1]["message"]
    finally:
        server.stop()
