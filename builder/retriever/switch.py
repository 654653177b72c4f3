"""Putting a tuned embedder into service without losing the old index or config on failure.

The live index is never written while a new one is built: it is copied (SQLite backup API)
to a staging folder beside it, the staging copy is re-embedded by the ingest pipeline under
the new ``embedding.model``, and only then are the folders swapped and raftsmith.yaml edited.
A failure at any step leaves the old index and config in place.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from rag.config import CONFIG_NAME, RaftsmithConfig, Workspace, parse_config
from rag.errors import ConfigError
from rag.fsutil import atomic_write
from rag.index.store import DB_NAME

__all__ = ["set_embedding_model", "staged_index", "swap_index"]


def _is_url(s: str) -> bool:
    return s.startswith(("http://", "https://"))


@contextlib.contextmanager
def staged_index(ws: Workspace) -> Iterator[Path]:
    """A consistent copy of the live index's SQLite store in a sibling folder, removed on exit
    unless :func:`swap_index` moved it into place."""
    live = ws.index_dir
    stage = live.parent / f".{live.name}.retune-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        src = sqlite3.connect(f"file:{live / DB_NAME}?mode=ro", uri=True)
        dst = sqlite3.connect(stage / DB_NAME)
        try:
            src.backup(dst)
        finally:
            dst.close()
            src.close()
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def reingest_paths(ws: Workspace, stored_sources: list[str]) -> list[str]:
    """What the re-embedding ingest reads: corpus.paths plus every stored local document that
    still exists (a file ingested by name outside corpus.paths keeps its place in the index)."""
    paths = list(ws.config.corpus.paths)
    for src in stored_sources:
        if not _is_url(src) and ws.path(src).is_file():
            paths.append(src)
    return paths


def swap_index(ws: Workspace, stage: Path) -> Path:
    """Move ``stage`` over the live index; returns where the old index went (the caller removes it,
    or moves it back with :func:`restore_index`)."""
    live = ws.index_dir
    old = live.parent / f".{live.name}.old-{os.getpid()}"
    shutil.rmtree(old, ignore_errors=True)
    os.replace(live, old)
    try:
        os.replace(stage, live)
    except OSError:
        os.replace(old, live)
        raise
    return old


def restore_index(ws: Workspace, old: Path) -> None:
    live = ws.index_dir
    failed = live.parent / f".{live.name}.failed-{os.getpid()}"
    shutil.rmtree(failed, ignore_errors=True)
    os.replace(live, failed)
    os.replace(old, live)
    shutil.rmtree(failed, ignore_errors=True)


def set_embedding_model(ws: Workspace, model: str) -> RaftsmithConfig:
    """Set ``embedding.model`` in the config file on disk, keeping every other key the user wrote
    (and the comment lines at its top); returns the validated config."""
    path = ws.config_path or ws.root / CONFIG_NAME
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    try:
        data: Any = yaml.safe_load(text) if text else {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}. Fix the syntax at the position shown.") from None
    data = data or {}
    if not isinstance(data.get("embedding") or {}, dict):
        raise ConfigError(f"{path}: 'embedding' must be a mapping (embedding: {{model: ...}}).")
    data.setdefault("embedding", {})
    data["embedding"] = {**(data["embedding"] or {}), "model": model}
    cfg = parse_config(data, str(path))
    header = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    body = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    atomic_write(path, "\n".join(header) + ("\n" if header else "") + body)
    return cfg
