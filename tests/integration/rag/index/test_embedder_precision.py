"""embedding.precision: bf16 autocast on CPUs with native bf16, vectors that match fp32."""

from __future__ import annotations

import numpy as np
import pytest

from rag.config import EmbeddingConfig
from rag.cpu import cpu_bf16_works
from rag.errors import ConfigError
from rag.index.embedder import BF16_MIN_BATCH, load_embedder, token_batches

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


def test_fp16_off_cuda_is_a_config_error_naming_the_fix() -> None:
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        load_embedder(EmbeddingConfig(precision="fp16", device="cpu"))


def test_token_batches_cut_by_padded_tokens() -> None:
    lengths = [10, 200, 12, 50, 200, 11, 9]
    batches = token_batches(lengths, budget=400)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))  # each text once
    for b in batches:
        assert len(b) * max(lengths[i] for i in b) <= 400 or len(b) == 1
    assert batches[0] == [1, 4]  # the two longest share a batch of 2 x 200
    assert batches[-1] == [3, 2, 5, 0, 6]  # the rest in one wide batch of 5 x 50
    assert token_batches([900], budget=100) == [[0]]  # a text over the budget still gets a batch
    assert token_batches([], budget=100) == []


def test_token_budget_batches_give_the_fixed_batch_vectors() -> None:
    texts = [t * k for k in (1, 3, 8) for t in TEXTS]  # mixed lengths, so batches differ in width
    fixed = load_embedder(EmbeddingConfig(precision="fp32")).encode(texts)
    budget = load_embedder(EmbeddingConfig(precision="fp32", batch_tokens=256))
    assert budget.batch_tokens == 256
    by_tokens = budget.encode(texts)
    assert by_tokens.shape == fixed.shape
    # same rows in the same order (padding differs, so equal to float rounding only)
    assert np.allclose(by_tokens, fixed, atol=1e-5)
    assert budget._token_lengths(texts[:1])[0] == budget.count_tokens(texts[0]) + 2  # [CLS] and [SEP]
