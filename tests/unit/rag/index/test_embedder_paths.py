"""Where a configured embedding model folder is looked up (no model is loaded here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag.config import EmbeddingConfig
from rag.errors import ConfigError
from rag.index.embedder import resolve_model_dir


def _model_folder(p: Path) -> Path:
    p.mkdir(parents=True)
    (p / "modules.json").write_text("[]")
    return p


def test_relative_folder_is_taken_under_the_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "ws"
    want = _model_folder(root / "embedding")
    monkeypatch.chdir(tmp_path)
    assert resolve_model_dir(EmbeddingConfig(model="embedding"), root) == want.resolve()


def test_relative_folder_in_the_current_folder_is_not_used_for_a_workspace(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The index was built with <root>/embedding; a same-named folder where the command
    # happens to run must not be picked up instead.
    _model_folder(tmp_path / "elsewhere" / "embedding")
    (tmp_path / "ws").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    with pytest.raises(ConfigError):
        resolve_model_dir(EmbeddingConfig(model="embedding"), tmp_path / "ws")
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_model_dir(EmbeddingConfig(model="./embedding"), tmp_path / "ws")


def test_absolute_folder_and_no_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _model_folder(tmp_path / "m")
    assert resolve_model_dir(EmbeddingConfig(model=str(folder)), tmp_path / "ws") == folder.resolve()
    monkeypatch.chdir(tmp_path)
    assert resolve_model_dir(EmbeddingConfig(model="m")) == folder.resolve()


def test_folder_without_a_model_is_named(tmp_path: Path) -> None:
    (tmp_path / "ws" / "empty").mkdir(parents=True)
    with pytest.raises(ConfigError, match="holds no sentence-transformers model"):
        resolve_model_dir(EmbeddingConfig(model="empty"), tmp_path / "ws")
