"""The onnx backend's pooling and batching, checked by hand (no model)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rag.errors import ConfigError
from rag.index.onnx_embedder import PoolingSpec, length_batches, pool, read_pooling


def _model(tmp_path: Path, modules: list[str], pooling: dict[str, bool]) -> Path:
    entries = [{"idx": i, "name": str(i), "path": "1_Pooling" if t == "Pooling" else "",
                "type": f"sentence_transformers.models.{t}"} for i, t in enumerate(modules)]
    (tmp_path / "modules.json").write_text(json.dumps(entries))
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    (tmp_path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128}))
    return tmp_path


def test_read_pooling_follows_the_folder(tmp_path: Path) -> None:
    spec = read_pooling(_model(tmp_path, ["Transformer", "Pooling"], {"pooling_mode_cls_token": True}))
    assert spec == PoolingSpec(mode="cls", normalize=False, max_seq_length=128)


def test_read_pooling_refuses_what_it_cannot_run(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="backend: torch"):
        read_pooling(_model(tmp_path, ["Transformer", "Pooling", "Dense"], {"pooling_mode_mean_tokens": True}))


def test_mean_pooling_ignores_padding_and_normalizes() -> None:
    hidden = np.array([[[1.0, 0.0], [3.0, 4.0], [100.0, 100.0]]], dtype=np.float32)
    mask = np.array([[1, 1, 0]])
    out = pool(hidden, mask, PoolingSpec("mean", normalize=False, max_seq_length=8))
    assert np.allclose(out, [[2.0, 2.0]])
    out = pool(hidden, mask, PoolingSpec("mean", normalize=True, max_seq_length=8))
    assert np.allclose(out, [[2 ** -0.5, 2 ** -0.5]])
    assert np.allclose(pool(hidden, mask, PoolingSpec("max", False, 8)), [[3.0, 4.0]])
    assert np.allclose(pool(hidden, mask, PoolingSpec("cls", False, 8)), [[1.0, 0.0]])


def test_length_batches_cover_every_index_once_longest_first() -> None:
    lengths = [5, 50, 1, 30, 7]
    batches = length_batches(lengths, 2)
    assert batches == [[1, 3], [4, 0], [2]]
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
