"""embedding.precision: bf16 autocast on CPUs with native bf16, vectors that match fp32."""

from __future__ import annotations

import numpy as np
import pytest

from rag.config import EmbeddingConfig
from rag.cpu import cpu_bf16_works
from rag.errors import ConfigError
from rag.index.embedder import BF16_MIN_BATCH, load_embedder

pytestmark = pytest.mark.integration

TEXTS = [
    "By default the relay listens for sensor connections on TCP port 7431.",
    "Replace the fan filter every six months.",
    "model = torch.hub.load('pytorch/vision', 'resnet18', pretrained=True)",
    "E-511 firmware signature mismatch: download the image again and verify it.",
]


def test_auto_follows_the_cpu_and_fp32_is_exact() -> None:
    auto = load_embedder(EmbeddingConfig(precision="auto"))
    assert auto.precision == ("bf16" if cpu_bf16_works() else "fp32")
    fp32 = load_embedder(EmbeddingConfig(precision="fp32"))
    assert fp32.precision == "fp32"
    a, b = fp32.encode(TEXTS), fp32.encode(TEXTS)
    assert a.dtype == np.float32 and np.array_equal(a, b)


@pytest.mark.skipif(not cpu_bf16_works(), reason="this CPU has no native bf16 (AVX512-BF16/AMX): auto stays fp32")
def test_bf16_vectors_match_fp32() -> None:
    texts = TEXTS * 3  # a batch: bf16 runs from BF16_MIN_BATCH texts on
    assert len(texts) >= BF16_MIN_BATCH
    fp32 = load_embedder(EmbeddingConfig(precision="fp32")).encode(texts)
    bf16_model = load_embedder(EmbeddingConfig(precision="bf16"))
    bf16 = bf16_model.encode(texts)
    one = load_embedder(EmbeddingConfig(precision="fp32")).encode(texts[:1])
    assert np.allclose(bf16_model.encode(texts[:1]), one, atol=1e-6)  # one query: fp32, not bf16
    assert bf16.dtype == np.float32
    assert np.allclose(np.linalg.norm(bf16, axis=1), 1.0, atol=1e-4)
    cos = (fp32 * bf16).sum(axis=1)
    assert cos.min() > 0.999, cos


def test_bf16_on_a_gpu_device_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="embedding.precision"):
        load_embedder(EmbeddingConfig(precision="bf16", device="cuda"))
