"""Ollama backend and ``raftsmith register`` against an in-process test double of Ollama's REST API.

No Ollama server can run here, so this double implements the documented endpoints
(/api/blobs/:digest HEAD+POST, /api/create, /api/tags, /api/show, /api/delete, /api/chat with
NDJSON streaming), checks what a real server checks (blob digests, known models), records
every request, and the tests assert the exact payloads the official client sends.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from rag.cli.main import cli
from rag.config import init_workspace, load_workspace
from rag.errors import ConfigError, OllamaUnavailable

pytestmark = pytest.mark.integration

REPLY = ["The relay ", "listens on ", "TCP port 7431 ", "[1].\n", "<ANSWER>: ", "7431"]
TEMPLATE = "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
SYSTEM = "You are a precise domain assistant."


class OllamaDouble:
    """In-process HTTP server speaking the subset of Ollama's API raftsmith uses."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.models: dict[str, dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        double = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().strip(), 16)
                        if size == 0:
                            self.rfile.readline()
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _send(self, code: int, obj: Any = None, ndjson: list[Any] | None = None) -> None:
                if ndjson is not None:
                    data = b"".join(json.dumps(o).encode() + b"\n" for o in ndjson)
                    ctype = "application/x-ndjson"
                else:
                    data = b"" if obj is None else json.dumps(obj).encode()
                    ctype = "application/json"
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _dispatch(self) -> None:
                raw = self._body() if self.command in ("POST", "DELETE") else b""
                body: Any = None
                if raw and not self.path.startswith("/api/blobs/"):
                    body = json.loads(raw)
                double.requests.append({"method": self.command, "path": self.path, "json": body,
                                        "bytes": len(raw) if self.path.startswith("/api/blobs/") else None})
                code, obj, nd = double.handle(self.command, self.path, body, raw)
                self._send(code, obj, nd)

            do_GET = do_POST = do_DELETE = do_HEAD = _dispatch  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @staticmethod
    def _tagged(name: str) -> str:
        return name if ":" in name else name + ":latest"

    def handle(self, method: str, path: str, body: Any, raw: bytes) -> tuple[int, Any, list[Any] | None]:
        if path.startswith("/api/blobs/"):
            digest = path.rsplit("/", 1)[1]
            if method == "HEAD":
                return (200 if digest in self.blobs else 404), None, None
            if "sha256:" + hashlib.sha256(raw).hexdigest() != digest:
                return 400, {"error": "digest mismatch"}, None
            self.blobs[digest] = raw
            return 201, None, None
        if (method, path) == ("GET", "/api/tags"):
            return 200, {"models": [{"name": n, "model": n, "modified_at": "2026-11-22T00:00:00Z", "size": 1,
                                     "digest": m["digest"], "details": {"format": "gguf", "family": "llama"}}
                                    for n, m in self.models.items()]}, None
        if (method, path) == ("POST", "/api/create"):
            return self._create(body)
        if (method, path) == ("POST", "/api/show"):
            m = self.models.get(self._tagged(body["model"]))
            if m is None:
                return 404, {"error": f"model '{body['model']}' not found"}, None
            req = m["request"]
            lines = [f"FROM /root/.ollama/models/blobs/{d.replace(':', '-')}" for d in (req.get("files") or {}).values()]
            if req.get("from"):
                lines.append(f"FROM {req['from']}")
            lines += [f"ADAPTER /root/.ollama/models/blobs/{d.replace(':', '-')}" for d in (req.get("adapters") or {}).values()]
            if req.get("system"):
                lines.append(f'SYSTEM """{req["system"]}"""')
            return 200, {"modelfile": "\n".join(lines), "template": req.get("template", ""), "parameters": "",
                         "details": {"format": "gguf"}, "model_info": {"general.architecture": "llama"}}, None
        if (method, path) == ("DELETE", "/api/delete"):
            if self.models.pop(self._tagged(body["model"]), None) is None:
                return 404, {"error": f"model '{body['model']}' not found"}, None
            return 200, None, None
        if (method, path) == ("POST", "/api/chat"):
            return self._chat(body)
        return 404, {"error": f"no route {method} {path}"}, None

    def _create(self, body: dict[str, Any]) -> tuple[int, Any, list[Any] | None]:
        for digest in [*(body.get("files") or {}).values(), *(body.get("adapters") or {}).values()]:
            if digest not in self.blobs:
                return 400, {"error": f"blob {digest} not found; upload it first"}, None
        if body.get("adapters") and not body.get("from"):
            return 400, {"error": "adapters need a base model in 'from'"}, None
        if body.get("from") and self._tagged(body["from"]) not in self.models:
            return 404, {"error": f"pull model manifest: model '{body['from']}' not found"}, None
        if not body.get("files") and not body.get("from"):
            return 400, {"error": "neither 'from' nor 'files' was specified"}, None
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        self.models[self._tagged(body["model"])] = {"request": body, "digest": digest}
        if body.get("stream", True):
            return 200, None, [{"status": "parsing GGUF"}, {"status": "writing manifest"}, {"status": "success"}]
        return 200, {"status": "success"}, None

    def _chat(self, body: dict[str, Any]) -> tuple[int, Any, list[Any] | None]:
        if self._tagged(body["model"]) not in self.models:
            return 404, {"error": f"model \"{body['model']}\" not found, try pulling it first"}, None
        base = {"model": body["model"], "created_at": "2026-11-22T00:00:00Z"}
        if not body.get("stream", True):
            return 200, {**base, "message": {"role": "assistant", "content": "".join(REPLY)}, "done": True,
                         "done_reason": "stop", "eval_count": len(REPLY)}, None
        parts = [{**base, "message": {"role": "assistant", "content": p}, "done": False} for p in REPLY]
        parts.append({**base, "message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "stop",
                      "total_duration": 1000, "eval_count": len(REPLY)})
        return 200, None, parts

    def calls(self, method: str | None = None, prefix: str = "") -> list[dict[str, Any]]:
        return [r for r in self.requests if (method is None or r["method"] == method) and r["path"].startswith(prefix)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def double() -> Iterator[OllamaDouble]:
    d = OllamaDouble()
    yield d
    d.close()


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


MODELFILE = (f'FROM ./model-q4_k_m.gguf\nTEMPLATE """{TEMPLATE}"""\nSYSTEM """{SYSTEM}"""\n'
             'PARAMETER stop "<|im_end|>"\nPARAMETER stop "<|im_start|>"\nPARAMETER num_ctx 2048\nPARAMETER temperature 0.2\n')
MODELFILE_ADAPTER = MODELFILE.replace("FROM ./model-q4_k_m.gguf", "FROM kestrel-base\nADAPTER ./adapter.gguf")
PARAMS = {"stop": ["<|im_end|>", "<|im_start|>"], "num_ctx": 2048, "temperature": 0.2}


def _workspace(tmp_path: Path, host: str) -> tuple[Path, dict[str, bytes]]:
    """A workspace with a small export: merged, base and adapter 'GGUFs' (Ollama's double does not parse them)."""
    ws = init_workspace(tmp_path / "ws", corpus_name="kestrel")
    cfg = yaml.safe_load(ws.config_path.read_text())
    cfg["ollama"]["host"] = host
    ws.config_path.write_text(yaml.safe_dump(cfg))
    d = ws.root / "gguf" / "kestrel"
    d.mkdir(parents=True)
    contents = {"model-q4_k_m.gguf": b"GGUF merged weights", "base-q4_k_m.gguf": b"GGUF base weights",
                "adapter.gguf": b"GGUF lora adapter", "Modelfile": MODELFILE.encode(), "Modelfile.adapter": MODELFILE_ADAPTER.encode()}
    roles = {"model-q4_k_m.gguf": "merged", "base-q4_k_m.gguf": "base", "adapter.gguf": "adapter",
             "Modelfile": "modelfile", "Modelfile.adapter": "modelfile-adapter"}
    files = []
    for name, data in contents.items():
        (d / name).write_bytes(data)
        files.append({"path": name, "role": roles[name], "quantization": "q4_k_m" if "q4" in name else None,
                      "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)})
    (d / "manifest.json").write_text(json.dumps({
        "format": "raftsmith-export/1", "name": "kestrel", "family": "smollm2", "chat_format": "chatml",
        "created_at": "2026-11-22T01:00:00+00:00", "base_model": {"id": "x", "sha256": "0" * 64},
        "stop": ["<|im_end|>"], "system_prompt": SYSTEM, "files": files}))
    return ws.root, contents


def _run(root: Path, *args: str) -> Any:
    return CliRunner().invoke(cli, [*args, "--config", str(root / "raftsmith.yaml")])


def test_register_merged_mode_exact_payloads(double: OllamaDouble, tmp_path: Path) -> None:
    root, contents = _workspace(tmp_path, double.url)
    res = _run(root, "register", "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert [(m["name"], m["role"], m["action"]) for m in report["models"]] == [
        ("kestrel-base", "base", "created"), ("kestrel", "tuned", "created")]
    base_d, merged_d = _sha(contents["base-q4_k_m.gguf"]), _sha(contents["model-q4_k_m.gguf"])
    assert [(r["method"], r["path"]) for r in double.requests] == [
        ("GET", "/api/tags"),
        ("HEAD", f"/api/blobs/{base_d}"), ("POST", f"/api/blobs/{base_d}"), ("POST", "/api/create"),
        ("HEAD", f"/api/blobs/{merged_d}"), ("POST", f"/api/blobs/{merged_d}"), ("POST", "/api/create"),
    ]
    assert double.blobs[merged_d] == contents["model-q4_k_m.gguf"]
    creates = [r["json"] for r in double.calls("POST", "/api/create")]
    assert creates[0] == {"model": "kestrel-base", "stream": False, "files": {"base-q4_k_m.gguf": base_d},
                          "template": TEMPLATE, "system": SYSTEM, "parameters": PARAMS}
    assert creates[1] == {"model": "kestrel", "stream": False, "files": {"model-q4_k_m.gguf": merged_d},
                          "template": TEMPLATE, "system": SYSTEM, "parameters": PARAMS}
    state = json.loads((root / ".raftsmith" / "ollama_registered.json").read_text())
    assert {v["name"] for v in state.values()} == {"kestrel", "kestrel-base"}
    audit = [json.loads(x) for x in (root / ".raftsmith" / "audit.jsonl").read_text().splitlines()]
    assert [(a["event"], a["model"]["name"], a["outcome"]) for a in audit] == [
        ("register", "kestrel-base", "created"), ("register", "kestrel", "created")]


def test_register_is_idempotent_and_replace_overwrites(double: OllamaDouble, tmp_path: Path) -> None:
    root, _ = _workspace(tmp_path, double.url)
    assert _run(root, "register").exit_code == 0
    n = len(double.requests)
    res = _run(root, "register", "--json")
    assert res.exit_code == 0
    assert [m["action"] for m in json.loads(res.stdout)["models"]] == ["unchanged", "unchanged"]
    again = double.requests[n:]
    assert not [r for r in again if r["method"] == "POST"]  # no upload, no create
    # the state file lost: /api/show proves the same blobs and template, so still nothing is created
    (root / ".raftsmith" / "ollama_registered.json").unlink()
    n = len(double.requests)
    res = _run(root, "register", "--json")
    assert [m["action"] for m in json.loads(res.stdout)["models"]] == ["unchanged", "unchanged"]
    assert not double.calls("POST", "/api/create")[2:] and double.calls("POST", "/api/show")
    # a changed Modelfile is different content: refused without --replace, overwritten with it
    mf = root / "gguf" / "kestrel" / "Modelfile"
    mf.write_text(mf.read_text().replace("num_ctx 2048", "num_ctx 4096"))
    res = _run(root, "register")
    assert res.exit_code == 1 and "--replace" in res.output
    res = _run(root, "register", "--replace", "--json")
    assert res.exit_code == 0, res.output
    assert [m["action"] for m in json.loads(res.stdout)["models"]] == ["replaced", "replaced"]
    assert double.calls("POST", "/api/create")[-1]["json"]["parameters"]["num_ctx"] == 4096


def test_register_adapter_mode(double: OllamaDouble, tmp_path: Path) -> None:
    root, contents = _workspace(tmp_path, double.url)
    res = _run(root, "register", "--adapter", "--json")
    assert res.exit_code == 0, res.output
    ad = _sha(contents["adapter.gguf"])
    create = double.calls("POST", "/api/create")[-1]["json"]
    assert create == {"model": "kestrel", "stream": False, "from": "kestrel-base", "adapters": {"adapter.gguf": ad},
                      "template": TEMPLATE, "system": SYSTEM, "parameters": PARAMS}
    assert double.blobs[ad] == contents["adapter.gguf"]
    assert "kestrel:latest" in double.models
    # adapter mode on a configured base that is not in Ollama: a clear error naming the fix
    cfg = yaml.safe_load((root / "raftsmith.yaml").read_text())
    cfg["ollama"]["base_model_name"] = "smollm2:135m"
    (root / "raftsmith.yaml").write_text(yaml.safe_dump(cfg))
    res = _run(root, "register", "--adapter", "--replace")
    assert res.exit_code == 1 and "ollama pull smollm2:135m" in res.output


def test_list_and_remove_only_what_raftsmith_registered(double: OllamaDouble, tmp_path: Path) -> None:
    root, _ = _workspace(tmp_path, double.url)
    assert _run(root, "register").exit_code == 0
    double.models["someone-elses:latest"] = {"request": {"files": {}}, "digest": "x"}
    rows = json.loads(_run(root, "register", "list", "--json").stdout)
    assert [(r["name"], r["present"]) for r in rows] == [("kestrel", True), ("kestrel-base", True)]
    res = _run(root, "register", "remove", "someone-elses")
    assert res.exit_code == 1 and "not registered by raftsmith" in res.output
    res = _run(root, "register", "remove", "kestrel")
    assert res.exit_code == 0, res.output
    assert double.calls("DELETE", "/api/delete")[-1]["json"] == {"model": "kestrel"}
    assert "kestrel:latest" not in double.models and "someone-elses:latest" in double.models
    rows = json.loads(_run(root, "register", "list", "--json").stdout)
    assert [r["name"] for r in rows] == ["kestrel-base"]
    # the flags of earlier releases still work
    assert json.loads(_run(root, "register", "--list", "--json").stdout) == rows
    res = _run(root, "register", "--remove", "kestrel-base")
    assert res.exit_code == 0, res.output
    assert json.loads(_run(root, "register", "list", "--json").stdout) == []


def test_ollama_backend_streams_through_the_double(double: OllamaDouble, tmp_path: Path) -> None:
    from rag.llm.ollama_backend import OllamaBackend

    root, _ = _workspace(tmp_path, double.url)
    assert _run(root, "register").exit_code == 0
    be = OllamaBackend("kestrel", host=double.url, num_ctx=2048, stop=["<|im_end|>"])
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "Which port?"}]
    pieces = list(be.chat(msgs, max_tokens=40, temperature=0.0, stream=True))
    assert pieces == REPLY
    req = double.calls("POST", "/api/chat")[-1]["json"]
    assert req == {"model": "kestrel", "messages": msgs, "stream": True, "tools": [],
                   "options": {"num_ctx": 2048, "num_predict": 40, "temperature": 0.0, "seed": 0, "stop": ["<|im_end|>"]}}
    assert be.chat(msgs, stream=False) == "".join(REPLY)
    # ask through the CLI with the ollama backend: 'tuned' resolves to the registered name
    res = _run(root, "ask", "Which port does the relay use?", "--backend", "ollama", "--model", "tuned", "--no-rag", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["backend"] == "ollama" and out["model"] == "tuned (kestrel)" and out["answer"] == "7431"
    assert double.calls("POST", "/api/chat")[-1]["json"]["model"] == "kestrel"
    assert double.calls("POST", "/api/chat")[-1]["json"]["options"]["num_ctx"] == load_workspace(root / "raftsmith.yaml").config.chat.num_ctx


def test_ollama_rag_answer_maps_citation(double: OllamaDouble, tmp_path: Path) -> None:
    from _runtime_ws import make_workspace

    from rag.answer import answer

    root = make_workspace(tmp_path / "rag-ws")
    ws_root, _ = _workspace(tmp_path, double.url)
    assert _run(ws_root, "register").exit_code == 0
    ws = load_workspace(root / "raftsmith.yaml")
    ws.config.ollama.host = double.url
    ws.config.ollama.tuned_model_name = "kestrel"
    res = answer(ws, "Which TCP port does the Kestrel KX-7 relay listen on for sensor ingest?", model="tuned", backend="ollama")
    assert res.backend == "ollama" and res.answer == "7431"
    assert [c.chunk_id for c in res.citations] == [res.retrieved[0].chunk_id]  # "[1]" -> the first document
    sent = double.calls("POST", "/api/chat")[-1]["json"]["messages"]
    assert sent[-1]["content"].startswith("<documents>") and res.retrieved[0].text.strip()[:40] in sent[-1]["content"]


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_unreachable_ollama_names_the_fix(tmp_path: Path) -> None:
    from rag.llm.ollama_backend import OllamaBackend

    url = f"http://127.0.0.1:{_closed_port()}"
    be = OllamaBackend("x", host=url)
    with pytest.raises(OllamaUnavailable, match=f"Ollama is not reachable at {url} - start it with 'ollama serve'"):
        be.chat([{"role": "user", "content": "hi"}])
    with pytest.raises(OllamaUnavailable):
        list(be.chat([{"role": "user", "content": "hi"}], stream=True))
    root, _ = _workspace(tmp_path, url)
    res = _run(root, "register")
    assert res.exit_code == 1 and f"Ollama is not reachable at {url}" in res.output and "ollama.host" in res.output
    res = _run(root, "ask", "hi", "--backend", "ollama", "--no-rag")
    assert res.exit_code == 1 and "ollama serve" in res.output


def test_modelfile_parser() -> None:
    from rag.register import parse_modelfile

    mf = parse_modelfile(MODELFILE_ADAPTER + '# comment\nLICENSE "Apache 2.0"\n')
    assert mf["from"] == "kestrel-base" and mf["adapters"] == ["./adapter.gguf"]
    assert mf["template"] == TEMPLATE and mf["system"] == SYSTEM and mf["license"] == "Apache 2.0"
    assert mf["parameters"] == PARAMS
    with pytest.raises(ConfigError, match="Unknown Modelfile instruction"):
        parse_modelfile("FROM x\nBOGUS y\n")
