"""Bundle create / verify / install on a small synthetic workspace (no models loaded).

The workspace is real in every way the bundle code cares about: a WAL-mode SQLite store with
rows, a FAISS-sized binary, an export folder whose manifest carries the true sha256 of its
"GGUF" files (random bytes: the bundle never parses GGUFs), and a tiny embedding folder.
One file over ~400 lines because every test shares that workspace builder.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
import tarfile
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from rag.bundle import create_bundle, find_secret, install_bundle, verify_bundle
from rag.cli.main import cli
from rag.config import Workspace, init_workspace, load_workspace
from rag.errors import ConfigError, IntegrityError

SECRET = "sk-or-v1-" + "a1b2c3d4e5f6" * 5


def _export(ws: Workspace, name: str, created_at: str, seed: int) -> Path:
    ex = ws.export_dir / name
    ex.mkdir(parents=True)
    rnd = __import__("random").Random(seed)
    files = []
    for fname, role, n in [("model-q4_k_m.gguf", "merged", 60_000), ("base-q4_k_m.gguf", "base", 40_000),
                           ("adapter.gguf", "adapter", 9_000)]:
        data = bytes(rnd.getrandbits(8) for _ in range(n))
        (ex / fname).write_bytes(data)
        files.append({"path": fname, "role": role, "quantization": "q4_k_m",
                      "sha256": hashlib.sha256(data).hexdigest(), "size": n})
    for fname, text in [("Modelfile", "FROM ./model-q4_k_m.gguf\nPARAMETER stop <|im_end|>\n"),
                        ("Modelfile.adapter", "FROM kestrel-base\nADAPTER ./adapter.gguf\n")]:
        (ex / fname).write_text(text)
        files.append({"path": fname, "role": "modelfile", "quantization": None,
                      "sha256": hashlib.sha256(text.encode()).hexdigest(), "size": len(text)})
    manifest = {"format": "raftsmith-export/1", "name": name, "family": "smollm2", "chat_format": "chatml",
                "created_at": created_at, "base_model": {"id": "HuggingFaceTB/SmolLM2-135M-Instruct", "sha256": "0" * 64},
                "stop": ["<|im_end|>"], "files": files, "final_loss": 0.5}
    (ex / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return ex


def make_workspace(root: Path) -> Workspace:
    """A small workspace: index (SQLite WAL + binary), two exports, tiny embedding folder."""
    ws = init_workspace(root, corpus_name="kestrel")
    (ws.root / "domain_questions" / "kestrel.yaml").write_text("- question: What port?\n  answer: 8443\n")
    idx = ws.index_dir
    idx.mkdir(parents=True, exist_ok=True)
    (idx / "index.faiss").write_bytes(os.urandom(20_000))
    (idx / "meta.json").write_text(json.dumps({"format": "raftsmith-index/1", "generation": 3}))
    from rag.index.store import IndexStore

    store = IndexStore(idx)  # the real schema
    store.set_meta("embedding_model", str(ws.root / "embedder"))
    store.close()
    con = sqlite3.connect(idx / "store.sqlite")
    con.execute("PRAGMA journal_mode=WAL")
    con.executemany("INSERT INTO meta VALUES (?, ?)", [(f"k{i}", f"v{i}") for i in range(200)])
    con.commit()  # left open: the rows sit in the -wal file, like a live store
    (idx / ".lock").write_text("123\n")
    (idx / "index.faiss.abc.tmp").write_bytes(b"half-written")
    make_workspace.open_connections.append(con)  # type: ignore[attr-defined]
    _export(ws, "kestrel-old", "2026-11-01T00:00:00Z", 1)
    _export(ws, "kestrel-smollm2", "2026-11-20T00:00:00Z", 2)
    emb = ws.root / "embedder"
    (emb / "1_Pooling").mkdir(parents=True)
    (emb / "modules.json").write_text('[{"idx": 0, "name": "0", "path": "", "type": "Transformer"}]')
    (emb / "config.json").write_text('{"hidden_size": 8}')
    (emb / "1_Pooling" / "config.json").write_text('{"word_embedding_dimension": 8}')
    (emb / "model.safetensors").write_bytes(os.urandom(30_000))
    cfg = yaml.safe_load(ws.config_path.read_text())
    cfg["embedding"]["model"] = str(emb)
    ws.config_path.write_text(yaml.safe_dump(cfg))
    return load_workspace(ws.config_path)


make_workspace.open_connections = []  # type: ignore[attr-defined]


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    w = make_workspace(tmp_path / "home-ws")
    yield w
    while make_workspace.open_connections:  # type: ignore[attr-defined]
        make_workspace.open_connections.pop().close()  # type: ignore[attr-defined]


@pytest.fixture
def bundle(ws: Workspace, tmp_path: Path) -> Path:
    out = tmp_path / "out" / "kestrel.tar"
    create_bundle(ws, out)
    return out


def _names(path: Path) -> list[str]:
    with tarfile.open(path) as tf:
        return tf.getnames()


def test_layout_manifest_first_and_complete(bundle: Path) -> None:
    names = _names(bundle)
    assert names[0] == "manifest.json"
    with tarfile.open(bundle) as tf:
        manifest = json.loads(tf.extractfile("manifest.json").read())  # type: ignore[union-attr]
        listed = {m["path"]: m for m in manifest["members"]}
        assert set(listed) == set(names[1:])
        for name in names[1:]:
            data = tf.extractfile(name).read()  # type: ignore[union-attr]
            assert listed[name]["size"] == len(data)
            assert listed[name]["sha256"] == hashlib.sha256(data).hexdigest()
    assert manifest["format"] == "raftsmith-bundle/1"
    assert manifest["export_name"] == "kestrel-smollm2"  # the newest by created_at, not kestrel-old
    assert manifest["raftsmith_version"]
    assert {"export/model-q4_k_m.gguf", "export/adapter.gguf", "export/Modelfile", "export/manifest.json",
            "index/store.sqlite", "index/index.faiss", "index/meta.json", "embedding/modules.json",
            "embedding/1_Pooling/config.json", "raftsmith.yaml", "domain_questions/kestrel.yaml"} <= set(names)
    # lock and temp files never travel
    assert not any(n.endswith((".lock", ".tmp", "-wal", "-shm")) for n in names)


def test_sqlite_snapshot_is_self_contained(bundle: Path, tmp_path: Path) -> None:
    with tarfile.open(bundle) as tf:
        data = tf.extractfile("index/store.sqlite").read()  # type: ignore[union-attr]
    db = tmp_path / "snap.sqlite"
    db.write_bytes(data)
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert con.execute("SELECT COUNT(*) FROM meta WHERE key LIKE 'k%'").fetchone()[0] == 200  # rows from the live WAL
    con.close()


def test_bundle_config_points_at_install_layout(bundle: Path) -> None:
    with tarfile.open(bundle) as tf:
        cfg = yaml.safe_load(tf.extractfile("raftsmith.yaml"))  # type: ignore[arg-type]
    assert cfg["embedding"]["model"] == "embedding"
    assert cfg["index"]["path"] == "index"
    assert cfg["export"]["out_dir"] == "gguf"
    assert cfg["chat"]["backend"] == "llama-cpp"


def test_verify_reports(bundle: Path) -> None:
    report = verify_bundle(bundle)
    assert report.members == len(_names(bundle)) - 1
    assert report.export_name == "kestrel-smollm2"
    assert report.total_bytes > 100_000


def test_gzip_bundle_roundtrip(ws: Workspace, tmp_path: Path) -> None:
    out = tmp_path / "b.tar.gz"
    rep = create_bundle(ws, out)
    assert out.read_bytes()[:2] == b"\x1f\x8b"
    assert verify_bundle(out).members == rep.members
    data = bytearray(out.read_bytes())
    data[len(data) // 2] ^= 0x40
    with pytest.raises(IntegrityError):
        verify_bundle(io.BytesIO(bytes(data)))


def test_export_option_and_no_embedding(ws: Workspace, tmp_path: Path) -> None:
    rep = create_bundle(ws, tmp_path / "b.tar", include_embedding_model=False, export_name="kestrel-old")
    names = _names(tmp_path / "b.tar")
    assert rep.export_name == "kestrel-old" and not rep.embedding_included
    assert not any(n.startswith("embedding/") for n in names)
    with pytest.raises(ConfigError, match="No export named 'nope'"):
        create_bundle(ws, tmp_path / "c.tar", export_name="nope")


def test_no_export_bundles_without_models_and_says_so(tmp_path: Path) -> None:
    ws = init_workspace(tmp_path / "bare", corpus_name="c")
    rep = create_bundle(ws, tmp_path / "b.tar", include_embedding_model=False)
    assert rep.export_name is None
    assert any("No export found" in w for w in rep.warnings)
    assert verify_bundle(tmp_path / "b.tar").export_name is None


def test_export_file_not_matching_its_manifest_is_refused(ws: Workspace, tmp_path: Path) -> None:
    gguf = ws.export_dir / "kestrel-smollm2" / "adapter.gguf"
    data = bytearray(gguf.read_bytes())
    data[100] ^= 1
    gguf.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="adapter.gguf does not match its export manifest"):
        create_bundle(ws, tmp_path / "b.tar")
    assert not list(tmp_path.glob("*.tar*")) and not list(tmp_path.glob(".b.tar*"))


def test_bad_output_name(ws: Workspace, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\.tar"):
        create_bundle(ws, tmp_path / "b.zip")


# --------------------------------------------------------------------------- secrets


@pytest.mark.parametrize(
    "text",
    [
        f"teacher:\n  api_key: {SECRET}\n",
        "token: ghp_" + "A1b2C3d4E5" * 4 + "\n",
        "aws: AKIA" + "ABCDEFGHIJKLMNOP" + "\n",
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n",
        "settings:\n  api_key: hunter2hunter2\n",
        '{"password": "correct-horse"}',
        "anthropic: sk-ant-api03-" + "Xy7_Qv2-b9Kd0LmN4pRs" * 4 + "\n",
        "stripe: sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc" + "\n",
        "-----BEGIN PGP PRIVATE KEY BLOCK-----\nlQdGBF\n-----END PGP PRIVATE KEY BLOCK-----\n",
    ],
)
def test_secret_shapes_found(text: str) -> None:
    assert find_secret(text, []) is not None


@pytest.mark.parametrize("text", ["api_key: null\n", "key_name: openrouter\n", "max_tokens: 256\n", "api_key: ''\n",
                                  "skip the sk-short one\n", "hmac_key_name: null\n",
                                  # hyphenated prose and digests are not keys
                                  "see /sk-hynix-memory-roadmap-2025 and pk-constraint-naming-conventions\n",
                                  "flag: --sk-disable-telemetry-upload\n",
                                  "sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\n"])
def test_no_false_positive(text: str) -> None:
    assert find_secret(text, []) is None


def test_secret_in_config_refused_and_never_printed(ws: Workspace, tmp_path: Path) -> None:
    cfg = yaml.safe_load(ws.config_path.read_text())
    cfg["teacher"]["api_key"] = SECRET  # an unknown key: tolerated by the config, caught by the scan
    ws.config_path.write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(cli, ["bundle", "create", str(tmp_path / "b.tar"), "--config", str(ws.config_path)])
    assert result.exit_code == 1
    assert "raftsmith.yaml" in result.output and "OpenRouter" in result.output
    assert SECRET not in result.output and SECRET[:12] not in result.output
    assert not (tmp_path / "b.tar").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_live_env_secret_refused(ws: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    live = "plainlookingvalue-1234567"  # no known shape: only the live-value check can catch it
    monkeypatch.setenv("OPENAI_API_KEY", live)
    q = ws.root / "domain_questions" / "leak.yaml"
    q.write_text(f"- question: what is the key?\n  answer: {live}\n")
    with pytest.raises(IntegrityError, match="domain_questions/leak.yaml") as err:
        create_bundle(ws, tmp_path / "b.tar")
    assert live not in str(err.value)


def test_keyring_secret_refused(ws: Workspace, tmp_path: Path) -> None:
    """A key stored with 'raftsmith keys set' is refused wherever it appears, shape or not."""
    import keyring
    from keyring_double import MemoryKeyring

    from rag.secrets import set_key

    previous = keyring.get_keyring()
    keyring.set_keyring(MemoryKeyring())
    try:
        stored = "Zq8-not-a-known-shape-77x"
        set_key("openrouter", stored)
        q = ws.root / "domain_questions" / "notes.yaml"
        q.write_text(f"- question: which key?\n  answer: {stored}\n")
        with pytest.raises(IntegrityError, match="keyring") as err:
            create_bundle(ws, tmp_path / "b.tar")
        assert "domain_questions/notes.yaml" in str(err.value) and stored not in str(err.value)
    finally:
        keyring.set_keyring(previous)


def test_secret_in_modelfile_refused(ws: Workspace, tmp_path: Path) -> None:
    mf = ws.export_dir / "kestrel-smollm2" / "Modelfile"
    mf.write_text(mf.read_text() + f"# {SECRET}\n")
    with pytest.raises(IntegrityError, match="export/Modelfile"):
        create_bundle(ws, tmp_path / "b.tar")


# --------------------------------------------------------------------------- install


def test_install_layout_config_and_audit(bundle: Path, tmp_path: Path) -> None:
    dest = tmp_path / "laptop" / "kestrel"
    rep = install_bundle(bundle, dest)
    assert rep.export_name == "kestrel-smollm2"
    ws2 = load_workspace(dest / "raftsmith.yaml")
    assert ws2.config.chat.backend == "llama-cpp"
    assert ws2.index_dir == dest / "index"
    assert (ws2.index_dir / "store.sqlite").is_file()
    assert ws2.config.embedding.model == "embedding"  # relative to the workspace: the folder can move
    assert (dest / "embedding" / "modules.json").is_file()
    assert ws2.export_dir == dest / "gguf"
    from rag.exports import newest_export

    exp = newest_export(ws2)
    assert exp is not None and exp.dir == dest / "gguf" / "kestrel-smollm2"
    for f in exp.manifest["files"]:
        assert hashlib.sha256((exp.dir / f["path"]).read_bytes()).hexdigest() == f["sha256"]
    assert (dest / ".raftsmith" / "bundle-manifest.json").is_file()
    # the index now names the bundled model folder, so the retriever accepts it
    con = sqlite3.connect(dest / "index" / "store.sqlite")
    assert con.execute("SELECT value FROM meta WHERE key='embedding_model'").fetchone()[0] == "embedding"
    con.close()
    from rag.audit import tail, verify

    assert verify(ws2.audit_path).ok
    assert tail(ws2.audit_path, 1)[0]["event"] == "bundle_install"
    # only dest was added next to the bundle's output folder
    assert sorted(p.name for p in (tmp_path / "laptop").iterdir()) == ["kestrel"]


def test_install_into_empty_existing_dir(bundle: Path, tmp_path: Path) -> None:
    dest = tmp_path / "empty"
    dest.mkdir()
    install_bundle(bundle, dest)
    assert (dest / "raftsmith.yaml").is_file()


def test_install_refuses_non_empty_dest(bundle: Path, tmp_path: Path) -> None:
    dest = tmp_path / "busy"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        install_bundle(bundle, dest)
    assert [p.name for p in dest.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["busy", "out", "home-ws"])


def test_cli_create_verify_install_json(ws: Workspace, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "cli.tar"
    r = runner.invoke(cli, ["bundle", "create", str(out), "--json", "--config", str(ws.config_path)])
    assert r.exit_code == 0, r.output
    created = json.loads(r.output)
    assert created["export_name"] == "kestrel-smollm2" and created["members"] > 10
    r = runner.invoke(cli, ["bundle", "verify", str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["ok"] is True
    r = runner.invoke(cli, ["bundle", "install", str(out), "--dest", str(tmp_path / "inst"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["dest"] == str(tmp_path / "inst")
    r = runner.invoke(cli, ["bundle", "verify", str(tmp_path / "missing.tar")])
    assert r.exit_code == 1 and "does not exist" in r.output


# --------------------------------------------------------------------------- --register (Ollama double)


class _OllamaDouble:
    """In-process stand-in for the Ollama REST API (it cannot run here); records every request."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.blobs: dict[str, bytes] = {}
        self.creates: list[dict] = []
        self.requests: list[tuple[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().strip().split(b";")[0], 16)
                        if size == 0:
                            self.rfile.readline()
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _send(self, code: int, obj: object | None = None) -> None:
                data = json.dumps(obj).encode() if obj is not None else b""
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def do_HEAD(self) -> None:  # noqa: N802
                outer.requests.append(("HEAD", self.path))
                digest = self.path.rsplit("/", 1)[-1]
                self._send(200 if digest in outer.blobs else 404)

            def do_GET(self) -> None:  # noqa: N802
                outer.requests.append(("GET", self.path))
                names = [{"name": c["model"], "model": c["model"]} for c in outer.creates]
                self._send(200, {"models": names}) if self.path == "/api/tags" else self._send(404, {"error": "no"})

            def do_POST(self) -> None:  # noqa: N802
                outer.requests.append(("POST", self.path))
                body = self._body()
                if self.path.startswith("/api/blobs/"):
                    digest = self.path.rsplit("/", 1)[-1]
                    if "sha256:" + hashlib.sha256(body).hexdigest() != digest:
                        return self._send(400, {"error": "digest mismatch"})
                    outer.blobs[digest] = body
                    return self._send(201)
                if self.path == "/api/create":
                    outer.creates.append(json.loads(body))
                    return self._send(200, {"status": "success"})
                return self._send(404, {"error": f"model not found ({self.path})"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_install_register_creates_models_in_ollama(bundle: Path, tmp_path: Path) -> None:
    ollama = _OllamaDouble()
    try:
        rep = install_bundle(bundle, tmp_path / "laptop", register=True, host=ollama.url)
    finally:
        ollama.close()
    assert rep.registered == ["kestrel-smollm2-base", "kestrel-smollm2"]
    assert [c["model"] for c in ollama.creates] == rep.registered
    exp = json.loads((tmp_path / "laptop" / "gguf" / "kestrel-smollm2" / "manifest.json").read_text())
    sha = {f["path"]: f["sha256"] for f in exp["files"]}
    assert ollama.creates[0]["files"] == {"base-q4_k_m.gguf": "sha256:" + sha["base-q4_k_m.gguf"]}
    assert ollama.creates[1]["files"] == {"model-q4_k_m.gguf": "sha256:" + sha["model-q4_k_m.gguf"]}
    # the uploaded bytes are the installed GGUFs, byte for byte
    merged = (tmp_path / "laptop" / "gguf" / "kestrel-smollm2" / "model-q4_k_m.gguf").read_bytes()
    assert ollama.blobs["sha256:" + sha["model-q4_k_m.gguf"]] == merged
    assert all(p.startswith("/api/") for _, p in ollama.requests)


def test_install_register_with_ollama_down_keeps_install(bundle: Path, tmp_path: Path) -> None:
    import socket

    from rag.errors import OllamaUnavailable

    with socket.socket() as s:  # a loopback port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dest = tmp_path / "laptop"
    with pytest.raises(OllamaUnavailable, match="installed at .*raftsmith register --config"):
        install_bundle(bundle, dest, register=True, host=f"http://127.0.0.1:{port}")
    assert load_workspace(dest / "raftsmith.yaml").config.chat.backend == "llama-cpp"


def test_long_and_unicode_names_survive(ws: Workspace, tmp_path: Path) -> None:
    name = "kestrel-" + "fragen-über-" * 12 + "x.yaml"  # > 100 bytes: needs a PAX header
    (ws.root / "domain_questions" / name).write_text("- question: Wo?\n  answer: Hier\n")
    out = tmp_path / "b.tar"
    create_bundle(ws, out)
    assert f"domain_questions/{name}" in _names(out)
    install_bundle(out, tmp_path / "inst")
    assert (tmp_path / "inst" / "domain_questions" / name).read_text().startswith("- question: Wo?")


def test_install_keeps_audit_log_inside_dest(ws: Workspace, tmp_path: Path) -> None:
    cfg = yaml.safe_load(ws.config_path.read_text())
    cfg["audit"]["path"] = str(tmp_path / "home-logs" / "audit.jsonl")  # absolute, outside the workspace
    ws.config_path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "b.tar"
    create_bundle(load_workspace(ws.config_path), out)
    dest = tmp_path / "laptop"
    install_bundle(out, dest)
    ws2 = load_workspace(dest / "raftsmith.yaml")
    assert ws2.audit_path == dest / ".raftsmith" / "audit.jsonl" and ws2.audit_path.is_file()
    assert not (tmp_path / "home-logs").exists()


def test_running_ingest_blocks_bundling(ws: Workspace, tmp_path: Path) -> None:
    from rag.errors import IndexStoreError
    from rag.index.store import writer_lock

    with writer_lock(ws.index_dir), pytest.raises(IndexStoreError, match="locked by another writer"):
        create_bundle(ws, tmp_path / "b.tar")
    assert not (tmp_path / "b.tar").exists()


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
def test_streaming_memory_stays_small(ws: Workspace, tmp_path: Path, suffix: str) -> None:
    """A 48 MB "GGUF" goes through create, verify and install with a few MB of Python heap."""
    import tracemalloc

    ex = ws.export_dir / "kestrel-smollm2"
    big = ex / "model-q4_k_m.gguf"
    # random bytes: gzip cannot shrink them, so no decompression burst hides in the numbers
    data = os.urandom(48 << 20)
    big.write_bytes(data)
    manifest = json.loads((ex / "manifest.json").read_text())
    for entry in manifest["files"]:
        if entry["path"] == big.name:
            entry["size"] = len(data)
            entry["sha256"] = hashlib.sha256(data).hexdigest()
    del data
    (ex / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / f"b{suffix}"
    tracemalloc.start()
    try:
        create_bundle(ws, out)
        verify_bundle(out)
        install_bundle(out, tmp_path / "inst")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (tmp_path / "inst" / "gguf" / "kestrel-smollm2" / big.name).stat().st_size == 48 << 20
    assert peak < 12 << 20, f"peak Python heap {peak / 2**20:.1f} MiB"


def test_install_refuses_when_declared_payload_does_not_fit(bundle: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil as sh

    real = sh.disk_usage
    monkeypatch.setattr(sh, "disk_usage", lambda p: real(p)._replace(free=1 << 20))
    with pytest.raises(ConfigError, match="GiB is free"):
        install_bundle(bundle, tmp_path / "laptop")
    assert not (tmp_path / "laptop").exists()
