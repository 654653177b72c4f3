"""Helpers shared by the runtime integration tests: an indexed Kestrel workspace, a fixture export.

The index of the sample corpus is built once per machine and cached under $RAFTSMITH_CACHE,
keyed by the corpus and the ingest/index code, so each test module only copies it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import yaml

from rag.fsutil import sha256_file

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DOCS = REPO / "examples" / "kestrel" / "docs"

TEST_CHAT = {"num_ctx": 2048, "max_tokens": 32, "top_k": 4}


def _index_key() -> str:
    h = hashlib.sha256()
    files = sorted(SAMPLE_DOCS.rglob("*")) + sorted((REPO / "rag" / "ingest").glob("*.py")) + sorted((REPO / "rag" / "index").glob("*.py"))
    for f in files:
        if f.is_file():
            h.update(str(f.relative_to(REPO)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def make_workspace(root: Path, chat: dict | None = None) -> Path:
    """A Kestrel workspace at ``root`` with a ready index and small chat settings."""
    from rag.config import init_workspace, load_workspace

    ws = init_workspace(root, corpus_name="kestrel")
    shutil.rmtree(ws.root / "docs")
    shutil.copytree(SAMPLE_DOCS, ws.root / "docs")
    for f in (REPO / "domain_questions").glob("kestrel*.yaml"):
        shutil.copy(f, ws.root / "domain_questions" / f.name)
    cfg = yaml.safe_load(ws.config_path.read_text())
    cfg["chat"].update(TEST_CHAT | (chat or {}))
    ws.config_path.write_text(yaml.safe_dump(cfg))
    ws = load_workspace(ws.config_path)
    cache = Path(os.environ.get("RAFTSMITH_CACHE", REPO / ".raftsmith-cache")) / "runtime-index" / _index_key()
    if (cache / "store.sqlite").is_file():
        shutil.copytree(cache, ws.index_dir, dirs_exist_ok=True)
    else:
        from rag.ingest.pipeline import ingest

        ingest(ws)
        tmp = cache.with_name(cache.name + f".tmp{os.getpid()}")
        shutil.copytree(ws.index_dir, tmp, ignore=shutil.ignore_patterns("*.lock"))
        try:
            os.replace(tmp, cache)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return ws.root


def add_fixture_export(ws_root: Path, gguf: Path, name: str = "test") -> Path:
    """gguf/<name>/ in the export-manifest format whose merged and base files are the packaged GGUF.

    A stand-in for a real export (the train/export side writes real ones); it exercises the
    resolution logic and lets "tuned" load a real model. Files are symlinks, not copies.
    """
    d = ws_root / "gguf" / name
    d.mkdir(parents=True, exist_ok=True)
    sha = sha256_file(gguf)
    files = []
    for fname, role in (("model-q4_k_m.gguf", "merged"), ("base-q4_k_m.gguf", "base")):
        target = d / fname
        if not target.exists():
            target.symlink_to(gguf)
        files.append({"path": fname, "role": role, "quantization": "q4_k_m", "sha256": sha, "size": gguf.stat().st_size})
    (d / "Modelfile").write_text(
        "FROM ./model-q4_k_m.gguf\n"
        'TEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"""\n'
        'SYSTEM """You are a precise domain assistant."""\n'
        'PARAMETER stop "<|im_end|>"\nPARAMETER stop "<|im_start|>"\nPARAMETER num_ctx 2048\n'
    )
    files.append({"path": "Modelfile", "role": "modelfile", "quantization": None, "sha256": sha256_file(d / "Modelfile"),
                  "size": (d / "Modelfile").stat().st_size})
    manifest = {
        "format": "raftsmith-export/1", "name": name, "family": "smollm2", "chat_format": "chatml",
        "created_at": "2026-11-22T00:00:00+00:00", "base_model": {"id": "HuggingFaceTB/SmolLM2-135M-Instruct", "sha256": sha},
        "stop": ["<|im_end|>"], "system_prompt": "You are a precise domain assistant.", "files": files,
        "training_data": {}, "hyperparameters": {}, "versions": {}, "final_loss": 0.0,
    }
    (d / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return d
