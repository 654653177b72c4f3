"""``chat.rerank: cross-encoder``: a sentence-transformers CrossEncoder reads (query, passage) pairs.

The model is found offline only: a local folder (relative paths are taken from the workspace,
so an installed bundle can move), or a hub id whose snapshot is already in the local Hugging
Face cache. Nothing is downloaded at answer time: the laptop is offline.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rag.errors import ConfigError
from rag.types import Chunk

log = logging.getLogger(__name__)

#: files of which at least one marks a folder as a transformers/sentence-transformers model
_MODEL_MARKERS = ("config.json", "modules.json")


def resolve_cross_encoder_dir(name: str, root: Path | None = None) -> Path:
    """The local folder of the CrossEncoder named by ``chat.rerank_model``."""
    given = Path(name).expanduser()
    path = root / given if (root is not None and not given.is_absolute()) else given
    if path.is_dir():
        if not any((path / m).is_file() for m in _MODEL_MARKERS):
            raise ConfigError(
                f"chat.rerank_model folder {path} holds no cross-encoder model (no config.json); point it at a "
                "folder saved with CrossEncoder.save_pretrained, or set chat.rerank: off."
            )
        return path.resolve()
    if given.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1:
        raise ConfigError(
            f"chat.rerank_model folder {path} does not exist; fix the path in raftsmith.yaml or set chat.rerank: off."
        )
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception:  # noqa: BLE001 - any hub failure here means "not in the local cache"
        raise ConfigError(
            f"chat.rerank_model '{name}' is not a folder in the workspace and not in the local Hugging Face cache. "
            f"Download it once on a connected machine (huggingface-cli download {name}), or set chat.rerank_model "
            "to a local folder, or chat.rerank: off."
        ) from None


class CrossEncoderReranker:
    """A loaded CrossEncoder; one ``predict`` call scores all candidates of a query."""

    name = "cross-encoder"

    def __init__(self, model_dir: Path, model_label: str, device: str = "cpu", batch_size: int = 32) -> None:
        from sentence_transformers import CrossEncoder

        from rag.index.embedder import _pick_device, _quiet_transformers

        _quiet_transformers()
        self.model_dir = model_dir
        self.model_label = model_label
        self.batch_size = batch_size
        try:
            self._model: Any = CrossEncoder(str(model_dir), device=_pick_device(device), local_files_only=True)
        except Exception as err:  # noqa: BLE001 - a broken folder is a config problem with a fix
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ConfigError(
                f"Could not load the cross-encoder from {model_dir}: {first} Check chat.rerank_model "
                "(a CrossEncoder folder or hub id), or set chat.rerank: off."
            ) from None
        # A tokenizer saved without model_max_length would pass pairs longer than the position table.
        positions = getattr(getattr(self._model.transformers_model, "config", None), "max_position_embeddings", None)
        if positions and (self._model.max_seq_length is None or self._model.max_seq_length > positions):
            self._model.max_seq_length = int(positions)
        self._lock = threading.Lock()
        self.pairs_scored = 0

    def score(self, query: str, chunks: Sequence[Chunk]) -> list[float]:
        if not chunks:
            return []
        pairs = [(query, passage_text(c)) for c in chunks]
        with self._lock:
            out = self._model.predict(pairs, batch_size=self.batch_size, show_progress_bar=False,
                                      convert_to_numpy=True)
            self.pairs_scored += len(pairs)
        return [float(x) for x in out.reshape(len(pairs), -1)[:, 0]]


def passage_text(c: Chunk) -> str:
    """What a reranker reads of a chunk: its heading path (where it stands) and its text."""
    return f"{c.heading}\n{c.text}" if c.heading else c.text


_CACHE: dict[tuple[str, str], CrossEncoderReranker] = {}
_CACHE_LOCK = threading.Lock()


def load_cross_encoder(name: str, root: Path | None = None, device: str = "cpu") -> CrossEncoderReranker:
    """Load (once per process) the CrossEncoder ``name`` (a folder under ``root`` or a cached hub id)."""
    model_dir = resolve_cross_encoder_dir(name, root)
    key = (str(model_dir), device)
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is None:
            log.info("loading cross-encoder %s from %s", name, model_dir)
            hit = CrossEncoderReranker(model_dir, name, device=device)
            _CACHE[key] = hit
        return hit
