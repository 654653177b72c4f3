"""Where train-retriever's figures are kept: the workspace report, the model folder, exports.

``.raftsmith/retriever.json`` holds the last run (switched or not). A tuned model folder holds
its own copy (``raftsmith_retriever.json``: it travels in the bundle with the model). Every
export manifest gets a ``retriever`` entry when the embedder is switched, and ``raftsmith
export`` adds the same entry to new exports while the configured embedder is the tuned one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rag.config import Workspace
from rag.exports import list_exports
from rag.fsutil import atomic_write
from rag.index.embedder import TUNED_REPORT_NAME

__all__ = ["MODEL_REPORT_NAME", "REPORT_NAME", "manifest_entry", "write_reports"]

REPORT_NAME = "retriever.json"
MODEL_REPORT_NAME = TUNED_REPORT_NAME
_MANIFEST_KEYS = ("model", "base_model", "pairs", "eval_questions", "base", "tuned", "hyperparameters",
                  "train_seconds", "device", "created_at")


def _dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"


def write_reports(ws: Workspace, model_dir: Path | None, result: dict[str, Any]) -> tuple[str, list[str]]:
    """Write the reports; returns the workspace report's path and the exports updated."""
    result = dict(result)
    ws.state_dir.mkdir(parents=True, exist_ok=True)
    path = ws.state_dir / REPORT_NAME
    result["report_path"] = str(path)
    updated: list[str] = []
    if model_dir is not None:
        atomic_write(model_dir / MODEL_REPORT_NAME, _dump(result))
        entry = {k: result.get(k) for k in _MANIFEST_KEYS}
        for exp in list_exports(ws):
            manifest = dict(exp.manifest)
            manifest["retriever"] = entry
            atomic_write(exp.dir / "manifest.json", _dump(manifest))
            updated.append(exp.name)
        result["exports_updated"] = updated
    atomic_write(path, _dump(result))
    return str(path), updated


def manifest_entry(ws: Workspace) -> dict[str, Any] | None:
    """The ``retriever`` entry of a new export manifest: the tuned embedder's figures while
    embedding.model is that embedder, else None."""
    from rag.errors import ConfigError
    from rag.index.embedder import resolve_model_dir

    if ws.config.embedding.model in ("", "default"):
        return None
    try:
        data = json.loads((resolve_model_dir(ws.config.embedding, ws.root) / MODEL_REPORT_NAME).read_text())
    except (OSError, ValueError, ConfigError):
        return None
    return {k: data.get(k) for k in _MANIFEST_KEYS} if isinstance(data, dict) else None
