"""Helpers for the generate integration tests: the sample index, a scripted loopback teacher.

The scripted server is a fault injector, not a model: it serves /v1/chat/completions on
127.0.0.1 and, unless a scripted fault is queued, answers like a careful teacher by quoting
the first sentence of the document the prompt names as the answer's source.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]


def _tree_hash(*dirs: Path) -> str:
    h = hashlib.sha256()
    for d in dirs:
        for f in sorted(d.rglob("*")):
            if f.is_file() and f.suffix in (".py", ".md", ".txt", ".rst", ".html", ".pdf"):
                h.update(str(f.relative_to(REPO)).encode())
                h.update(f.read_bytes())
    return h.hexdigest()[:16]


def ensure_index(ws_root: Path, paraphrases: int = 0, plain: bool = True) -> Path:
    """Ingest ws_root's docs once per machine (cached under $RAFTSMITH_CACHE), copy the index in.

    ``raft.paraphrases`` is set to ``paraphrases``: the teacher's extra phrasings add one call
    per question item, so they are off unless a test is about them. ``plain`` (the default,
    for the tests of the teacher, faults and row contract): one phrasing per item (the
    sample's ``paraphrases:`` removed), no closed-book rows and the chunk-disjoint split, so
    one question is one teacher call and one row. The knowledge tests pass ``plain=False``.
    """
    import yaml

    from rag.config import load_workspace

    cfg = ws_root / "raftsmith.yaml"
    data = yaml.safe_load(cfg.read_text())
    data.setdefault("raft", {})["paraphrases"] = paraphrases
    if plain:
        data["raft"].update({"closed_book": 0.0, "eval_split": "facts"})
        for qf in (ws_root / "domain_questions").glob("kestrel*.yaml"):
            qs = yaml.safe_load(qf.read_text())
            for group in qs.get("questions") or []:
                for item in group.get("items") or []:
                    if isinstance(item, dict):
                        item.pop("paraphrases", None)
            qf.write_text(yaml.safe_dump(qs, sort_keys=False))
    cfg.write_text(yaml.safe_dump(data))
    ws = load_workspace(cfg)
    key = _tree_hash(REPO / "examples" / "kestrel" / "docs", REPO / "rag" / "ingest", REPO / "rag" / "index")
    cache = Path(os.environ["RAFTSMITH_CACHE"]) / "generate-sample-index" / key
    if not (cache / "done").exists():
        from rag.ingest.pipeline import ingest

        ingest(ws)
        tmp = cache.with_name(cache.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(ws.index_dir, tmp)
        (tmp / "done").write_text("ok")
        shutil.rmtree(cache, ignore_errors=True)
        os.replace(tmp, cache)
    else:
        shutil.rmtree(ws.index_dir, ignore_errors=True)
        shutil.copytree(cache, ws.index_dir, ignore=shutil.ignore_patterns("done"))
    return ws_root / "raftsmith.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------- scripted teacher


def careful_answer(body: dict[str, Any]) -> str:
    """A valid teacher reply for the request: quote the named document's first sentence."""
    msgs = body.get("messages", [])
    user = next((m["content"] for m in reversed(msgs) if m.get("role") == "user"), "")
    first_user = next((m["content"] for m in msgs if m.get("role") == "user"), "")
    if '"paraphrases"' in first_user:  # the phrasings request (or its JSON retry): rewordings, one reversal
        user = first_user
        q = re.search(r"^Question: (.*)$", user, re.MULTILINE)
        a = re.search(r"^Answer: (.*)$", user, re.MULTILINE)
        n = int(re.search(r"Write (\d+) different phrasings", user).group(1))
        question = q.group(1).rstrip("?") if q else "the Kestrel KX-7 relay"
        out: dict[str, Any] = {"paraphrases": [f"Variant {i + 1}: {question}?" for i in range(n)]}
        if '"reversals"' in user and a:
            out["reversals"] = [{"question": f"On a Kestrel KX-7, what has the value {a.group(1)}?", "answer": question}]
        return json.dumps(out)
    if '"facts"' in first_user:  # synthesis (or its JSON retry): two facts per chunk (its first lines), n phrasings each
        user = first_user
        n = int(re.search(r"; (\d+) differently worded questions", user).group(1))
        heading = re.search(r"section '([^']*)'", user)
        topic = heading.group(1) if heading else "the relay"
        doc = re.search(r"<document>\n(.*?)\n</document>", user, re.DOTALL)
        lines = [ln.strip() for ln in (doc.group(1) if doc else "").splitlines()
                 if len(ln.split()) >= 3 and not ln.lstrip().startswith(("#", "|", "```", "-"))]
        facts = [{"fact": ln, "answer": " ".join(ln.split()[:2]).strip(".,:;"), "category": "facts",
                  "questions": [f"What does the Kestrel KX-7 manual say about {topic} (fact {i + 1}, phrasing {j + 1})?"
                                for j in range(n)]} for i, ln in enumerate(lines[:2])]
        return json.dumps({"facts": facts})
    m = re.search(r"The answer is in document \[(\d+)\]", user)
    n = int(m.group(1)) if m else 1
    docs = re.findall(r'<document id="(\d+)"[^\n]*>\n(.*?)\n</document>', user, re.DOTALL)
    if not docs:
        return json.dumps({"answer": "7431"})
    text = dict(docs).get(str(n), docs[0][1])
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith(("#", "|", "```"))]
    sentence = lines[0] if lines else " ".join(text.split())[:200]
    reasoning = f"The document says ##begin_quote##{sentence}##end_quote## [{n}]."
    return json.dumps({"reasoning": reasoning, "answer": sentence[:60]})


class ScriptedTeacher:
    """A ThreadingHTTPServer on 127.0.0.1 whose replies follow a queue of scripted actions.

    Actions: ("ok",), ("status", code, headers), ("sleep", seconds), ("malformed",),
    ("midstream",), ("text", content). Each request pops one action (default "ok").
    """

    def __init__(self, delay_s: float = 0.0):
        self.actions: deque[tuple[Any, ...]] = deque()
        self.requests: list[dict[str, Any]] = []
        self.times: list[float] = []
        self.delay_s = delay_s
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out as separate writes

            def log_message(self, *a: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._send(200, {"object": "list", "data": [{"id": "scripted", "object": "model"}]})

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(n) or b"{}")
                with outer.lock:
                    outer.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                    outer.times.append(time.monotonic())
                    action = outer.actions.popleft() if outer.actions else ("ok",)
                if outer.delay_s:
                    time.sleep(outer.delay_s)
                kind = action[0]
                if kind == "status":
                    code, headers = action[1], action[2] if len(action) > 2 else {}
                    self._send(code, {"error": {"message": f"scripted {code}", "code": code}}, headers)
                elif kind == "sleep":
                    time.sleep(action[1])
                    self._send(200, self._completion(careful_answer(body), body))
                elif kind == "malformed":
                    raw = b'{"id": "x", "choices": [ {"message": '
                    self._raw(200, raw)
                elif kind == "midstream":
                    payload = json.dumps(self._completion(careful_answer(body), body)).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload[: len(payload) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)
                elif kind == "text":
                    self._send(200, self._completion(action[1], body))
                else:
                    self._send(200, self._completion(careful_answer(body), body))

            def _completion(self, content: str, body: dict[str, Any]) -> dict[str, Any]:
                prompt = sum(len(m.get("content", "")) for m in body.get("messages", [])) // 4
                return {
                    "id": "chatcmpl-scripted", "object": "chat.completion", "created": int(time.time()),
                    "model": body.get("model", "scripted"),
                    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
                    "usage": {"prompt_tokens": prompt, "completion_tokens": len(content) // 4, "total_tokens": prompt + len(content) // 4},
                }

            def _send(self, code: int, obj: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                self._raw(code, json.dumps(obj).encode(), headers)

            def _raw(self, code: int, data: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ScriptedTeacher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def script(self, *actions: tuple[Any, ...]) -> None:
        with self.lock:
            self.actions.extend(actions)

    @property
    def calls(self) -> int:
        return len(self.requests)


# ---------------------------------------------------------------- a real local teacher


@pytest.fixture
def llama_server(smollm2_gguf: Path, tmp_path: Path):
    port = free_port()
    log = open(tmp_path / "llama_server.log", "wb")  # noqa: SIM115 - a file, not a pipe: the load log would fill a pipe
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_gguf), "--model_alias", "smollm2",
         "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", "2"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            pytest.fail(f"llama_cpp.server exited: {(tmp_path / 'llama_server.log').read_text(errors='replace')[-2000:]}")
        try:
            if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("llama_cpp.server did not start within 120 s")
        time.sleep(0.5)
    yield url
    log.close()
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
