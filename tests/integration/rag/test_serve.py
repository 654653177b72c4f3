"""``raftsmith serve`` through the real openai client (non-streaming and streaming), with audit."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from _runtime_ws import add_fixture_export, make_workspace

from rag.config import load_workspace
from rag.errors import ConfigError

pytestmark = pytest.mark.integration

Q = "Which TCP port does the Kestrel KX-7 relay listen on by default for sensor ingest?"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    from rag.packaged import smollm2_gguf
    from rag.serve import make_server

    root = make_workspace(tmp_path_factory.mktemp("serve") / "ws")
    add_fixture_export(root, smollm2_gguf())
    server = make_server(load_workspace(root / "raftsmith.yaml"), host="127.0.0.1", port=0)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield server.url, root
    server.shutdown()
    server.server_close()
    server.engine.close()


def _client(url: str):  # type: ignore[no-untyped-def]
    import openai

    return openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=300)


def _audit(root: Path) -> list[dict]:
    return [json.loads(x) for x in (root / ".raftsmith" / "audit.jsonl").read_text().splitlines()]


def test_models_listed(served: tuple[str, Path]) -> None:
    url, root = served
    ids = [m.id for m in _client(url).models.list().data]
    assert ids == ["tuned", "base", "tuned-no-rag", "base-no-rag"]
    assert url.startswith("http://127.0.0.1:")
    starts = [r for r in _audit(root) if r["event"] == "serve_start"]
    assert len(starts) == 1 and starts[0]["host"] == "127.0.0.1" and starts[0]["port"] == int(url.rsplit(":", 1)[1].split("/")[0])


def test_chat_completion_with_rag(served: tuple[str, Path]) -> None:
    url, root = served
    resp = _client(url).chat.completions.create(model="base", messages=[
        {"role": "system", "content": "ignored by the server"}, {"role": "user", "content": Q}], max_tokens=24)
    content = resp.choices[0].message.content
    assert content and resp.model == "base" and resp.choices[0].finish_reason == "stop"
    rec = _audit(root)[-1]
    assert rec["event"] == "query" and rec["channel"] == "serve" and rec["query"] == Q and rec["rag"] is True
    assert rec["chunk_ids"] and content.startswith(rec["answer"])
    assert resp.usage is not None and resp.usage.prompt_tokens > 100  # the documents went into the prompt
    assert 0 < resp.usage.completion_tokens <= 24


def test_streaming_matches_the_audited_answer(served: tuple[str, Path]) -> None:
    url, root = served
    stream = _client(url).chat.completions.create(model="tuned", messages=[{"role": "user", "content": Q}],
                                                   max_tokens=24, stream=True)
    pieces, finish = [], None
    for ev in stream:
        if ev.choices[0].delta.content:
            pieces.append(ev.choices[0].delta.content)
        finish = ev.choices[0].finish_reason or finish
    text = "".join(pieces)
    assert finish == "stop" and len(pieces) > 2
    rec = _audit(root)[-1]
    assert rec["model"]["name"] == "tuned (test)" and text.startswith(rec["answer"])


def test_closed_book_and_errors(served: tuple[str, Path]) -> None:
    import openai

    url, root = served
    c = _client(url)
    resp = c.chat.completions.create(model="base-no-rag", messages=[{"role": "user", "content": "Say hi."}], max_tokens=8)
    assert resp.choices[0].message.content is not None
    assert _audit(root)[-1]["rag"] is False and _audit(root)[-1]["chunk_ids"] == []
    with pytest.raises(openai.BadRequestError, match="Unknown model"):
        c.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="last message must come from the user"):
        c.chat.completions.create(model="base", messages=[{"role": "assistant", "content": "hi"}])


def test_refuses_non_loopback_bind(tmp_path: Path) -> None:
    from rag.config import init_workspace
    from rag.serve import make_server

    ws = init_workspace(tmp_path / "ws")
    with pytest.raises(ConfigError, match="--allow-remote"):
        make_server(ws, host="0.0.0.0", port=0)
