"""The openai backend against a real OpenAI-compatible server: llama_cpp.server on SmolLM2."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from _runtime_ws import make_workspace
from click.testing import CliRunner

from rag.cli.main import cli

pytestmark = pytest.mark.integration


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python[server] is not installed")
    from rag.packaged import smollm2_gguf

    port = _free_port()
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_gguf()), "--model_alias", "smollm2",
             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", "1"],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            pytest.fail("llama_cpp.server did not start within 120 s")
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def test_ask_through_openai_backend_with_rag(llama_server: str, tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "ws", chat={"backend": "openai", "base_url": llama_server})
    res = CliRunner().invoke(cli, ["ask", "Which TCP port does the Kestrel KX-7 relay listen on by default?",
                                   "--model", "smollm2", "--json", "--config", str(root / "raftsmith.yaml")])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["backend"] == "openai" and out["model"] == "smollm2" and out["answer"].strip()
    assert out["retrieved"] and out["prompt_tokens"] > 100
    rec = json.loads((root / ".raftsmith" / "audit.jsonl").read_text().splitlines()[-1])
    assert rec["backend"] == "openai" and rec["outcome"] == "answered"


def test_openai_backend_streams(llama_server: str) -> None:
    from rag.llm.openai_backend import OpenAIBackend

    be = OpenAIBackend("smollm2", base_url=llama_server, stop=["<|im_end|>"])
    msgs = [{"role": "user", "content": "Count from one to five."}]
    pieces = list(be.chat(msgs, max_tokens=16, temperature=0.0, stream=True))
    assert len(pieces) > 1
    assert "".join(pieces).strip() == str(be.chat(msgs, max_tokens=16, temperature=0.0)).strip()


def test_unreachable_openai_server(tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "ws", chat={"backend": "openai", "base_url": f"http://127.0.0.1:{_free_port()}/v1"})
    cfg = yaml.safe_load((root / "raftsmith.yaml").read_text())
    assert cfg["chat"]["backend"] == "openai"
    res = CliRunner().invoke(cli, ["ask", "hi", "--no-rag", "--model", "x", "--config", str(root / "raftsmith.yaml")])
    assert res.exit_code == 1 and "not reachable" in res.output and "chat.base_url" in res.output


def test_llm_judge_grades_through_the_teacher_config(llama_server: str, tmp_path: Path) -> None:
    from rag.config import load_workspace
    from rag.evaluate.judge import judge_rows

    root = make_workspace(tmp_path / "ws")
    ws = load_workspace(root / "raftsmith.yaml")
    ws.config.teacher.provider = "openai-compatible"
    ws.config.teacher.base_url = llama_server
    ws.config.teacher.model = "smollm2"
    rows = [{"question": "Which port?", "reference": "7431", "answer": "Port 7431."},
            {"question": "Price?", "reference": None, "answer": "I don't know."}]
    judge_rows(ws, rows)
    for r in rows:  # the tiny model may not produce a valid grade; then the row says why, never a guess
        j = r["judge"]
        assert ("score" in j and 0.0 <= j["score"] <= 1.0) or ("error" in j and "JSON grade" in j["error"]), j
