"""The embedding model run by onnxruntime (``embedding.backend: onnx | onnx-int8``).

The transformer is exported once with ``torch.onnx.export`` (dynamic batch and sequence axes)
into ``$RAFTSMITH_CACHE/onnx/<model>-<digest>/`` and reused; ``onnx-int8`` adds a copy
quantized by ``onnxruntime.quantization.quantize_dynamic``. The cache key is a digest of the
model folder's files, so a changed model never reuses an old export. Pooling and normalization
follow the sentence-transformers folder itself (``modules.json``, the pooling config,
``sentence_bert_config.json``'s ``max_seq_length``), so vectors match ``SentenceEmbedder``'s.

sentence-transformers' own ``backend="onnx"`` needs ``optimum``, whose pins would replace the
transformers version the rest of raftsmith uses; exporting here needs only torch and onnx.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rag.errors import ConfigError
from rag.fsutil import atomic_path, file_digest

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

#: bump when the export (opset, inputs, outputs) changes: old cache folders are then ignored
EXPORT_VERSION = 1
OPSET = 17
#: the model files whose bytes decide the export (weights, architecture, tokenizer, pooling)
_KEY_FILES = ("model.safetensors", "pytorch_model.bin", "config.json", "modules.json",
              "sentence_bert_config.json", "tokenizer.json", "vocab.txt")

ONNX_MISSING = ("embedding.backend '{backend}' needs onnxruntime and onnx, which are not installed. "
                "Install them with: pip install 'raftsmith[onnx]' (or set embedding.backend: torch).")


@dataclass(frozen=True)
class PoolingSpec:
    """What the sentence-transformers folder says to do after the transformer."""

    mode: str  # 'mean' | 'cls' | 'max' | 'mean_sqrt_len'
    normalize: bool
    max_seq_length: int


def read_pooling(model_dir: Path) -> PoolingSpec:
    """Pooling, normalization and truncation from the model folder's own config files."""
    modules_path = model_dir / "modules.json"
    if not modules_path.is_file():
        raise ConfigError(f"{model_dir} has no modules.json: the onnx backend needs a sentence-transformers folder.")
    modules = json.loads(modules_path.read_text(encoding="utf-8"))
    types = [str(m.get("type", "")) for m in modules]
    pool_path = None
    for m in modules:
        if str(m.get("type", "")).endswith("models.Pooling"):
            pool_path = model_dir / str(m.get("path", "")) / "config.json"
    known = ("models.Transformer", "models.Pooling", "models.Normalize")
    extra = [t for t in types if not t.endswith(known)]
    if extra or pool_path is None or not pool_path.is_file():
        raise ConfigError(
            f"The model in {model_dir} has modules the onnx backend does not run ({extra or 'no Pooling'}); "
            "use embedding.backend: torch for it.")
    pool = json.loads(pool_path.read_text(encoding="utf-8"))
    modes = [name for key, name in (("pooling_mode_mean_tokens", "mean"), ("pooling_mode_cls_token", "cls"),
                                    ("pooling_mode_max_tokens", "max"),
                                    ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len")) if pool.get(key)]
    if len(modes) != 1:
        raise ConfigError(f"{pool_path} asks for pooling {modes or 'none'}; the onnx backend runs exactly one mode. "
                          "Use embedding.backend: torch for this model.")
    max_seq = 512
    sbert = model_dir / "sentence_bert_config.json"
    if sbert.is_file():
        max_seq = int(json.loads(sbert.read_text(encoding="utf-8")).get("max_seq_length") or 512)
    return PoolingSpec(mode=modes[0], normalize=any(t.endswith("models.Normalize") for t in types),
                       max_seq_length=max_seq)


def pool(hidden: np.ndarray, mask: np.ndarray, spec: PoolingSpec) -> np.ndarray:
    """sentence-transformers' pooling (and Normalize) over ``hidden`` [batch, seq, dim]."""
    import numpy as np

    m = mask.astype(np.float32)[:, :, None]
    if spec.mode == "cls":
        out = hidden[:, 0]
    elif spec.mode == "max":
        out = np.where(m > 0, hidden, -1e9).max(axis=1)
    else:
        summed = (hidden * m).sum(axis=1)
        counts = np.clip(m.sum(axis=1), 1e-9, None)
        out = summed / (np.sqrt(counts) if spec.mode == "mean_sqrt_len" else counts)
    out = out.astype(np.float32)
    if spec.normalize:
        out /= np.clip(np.linalg.norm(out, axis=1, keepdims=True), 1e-12, None)
    return out


def cache_root() -> Path:
    return Path(os.environ.get("RAFTSMITH_CACHE") or Path.home() / ".cache" / "raftsmith").expanduser() / "onnx"


def export_dir(model_dir: Path) -> Path:
    """The cache folder for ``model_dir``: its name plus a digest of the files that decide the graph."""
    h = hashlib.sha256(f"export-v{EXPORT_VERSION}-opset{OPSET}".encode())
    for name in _KEY_FILES:
        p = model_dir / name
        if p.is_file():
            h.update(f"{name}:{file_digest(p)}\n".encode())
    return cache_root() / f"{model_dir.name}-{h.hexdigest()[:16]}"


def _require_onnx(backend: str) -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ConfigError(ONNX_MISSING.format(backend=backend)) from None


def export_onnx(model_dir: Path, out: Path) -> None:
    """Export the transformer of ``model_dir`` (last hidden state) to ``out``, atomically."""
    import torch
    from transformers import AutoModel

    model: Any = AutoModel.from_pretrained(str(model_dir))
    model.eval()
    uses_types = "token_type_ids" in _input_names(model_dir)

    class _Hidden(torch.nn.Module):
        def __init__(self, inner: Any):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
            kw = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, **kw).last_hidden_state

    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if uses_types else [])
    dummy = tuple(torch.ones((2, 8), dtype=torch.long) for _ in names)
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes["last_hidden_state"] = {0: "batch", 1: "sequence"}
    # the tracer warns about Python-side shape checks; padded batches are compared to torch in the tests
    with atomic_path(out) as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Hidden(model), dummy, str(tmp), input_names=names, output_names=["last_hidden_state"],
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False)


def quantize_int8(src: Path, out: Path) -> None:
    """Dynamic int8 quantization of ``src`` (weights int8 per channel, activations quantized at run time)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with atomic_path(out) as tmp:
        quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8, per_channel=True)


def _input_names(model_dir: Path) -> list[str]:
    from transformers import AutoTokenizer

    tok: Any = AutoTokenizer.from_pretrained(str(model_dir))
    return list(tok.model_input_names)


_EXPORT_LOCK = threading.Lock()


def ensure_export(model_dir: Path, backend: str) -> Path:
    """The cached ONNX file for ``backend`` ('onnx' fp32 or 'onnx-int8'), made on first use."""
    _require_onnx(backend)
    folder = export_dir(model_dir)
    fp32 = folder / "model.onnx"
    want = fp32 if backend == "onnx" else folder / "model-int8.onnx"
    with _EXPORT_LOCK:
        if want.is_file():
            return want
        folder.mkdir(parents=True, exist_ok=True)
        if not fp32.is_file():
            log.info("exporting %s to ONNX in %s (once)", model_dir, folder)
            export_onnx(model_dir, fp32)
        if backend == "onnx-int8" and not want.is_file():
            quantize_int8(fp32, want)
    return want


class OnnxEmbedder:
    """The ``TextEmbedder`` of ``embedding.backend: onnx | onnx-int8`` (CPU, onnxruntime)."""

    def __init__(self, model_dir: Path, model_id: str, backend: str = "onnx", batch_size: int = 32,
                 threads: int | None = None):
        _require_onnx(backend)
        import onnxruntime as ort
        from transformers import AutoTokenizer

        self.model_dir = model_dir
        self.model_id = model_id
        self.backend = backend
        self.device = "cpu"
        self.precision = "int8" if backend == "onnx-int8" else "fp32"
        self.batch_size = batch_size
        self.spec = read_pooling(model_dir)
        self.max_tokens = self.spec.max_seq_length
        self.onnx_path = ensure_export(model_dir, backend)
        self._tok: Any = AutoTokenizer.from_pretrained(str(model_dir))
        ort.set_default_logger_severity(3)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        self._sess: Any = ort.InferenceSession(str(self.onnx_path), opts, providers=["CPUExecutionProvider"])
        self._inputs = [i.name for i in self._sess.get_inputs()]
        self.dim = int(self._sess.get_outputs()[0].shape[-1])
        self.calls = 0
        self.texts_embedded = 0
        self._lock = threading.Lock()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        import numpy as np

        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        with self._lock:
            self.calls += 1
            self.texts_embedded += len(texts)
            for batch in length_batches([len(t) for t in texts], self.batch_size):
                enc = self._tok([texts[i] for i in batch], padding=True, truncation=True,
                                max_length=self.max_tokens, return_tensors="np")
                feed = {n: enc[n].astype(np.int64) for n in self._inputs}
                hidden = self._sess.run(None, feed)[0]
                out[batch] = pool(hidden, enc["attention_mask"], self.spec)
        return out

    def count_tokens(self, text: str) -> int:
        """Tokens the model sees for ``text`` (without [CLS]/[SEP])."""
        return len(self._tok(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"])


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Index batches of similar length (longest first), so each batch pads little."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]

