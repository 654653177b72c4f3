"""The frozen-layer cache (builder.train.frozen_cache) changes speed, never the numbers."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from builder.train.data import IGNORE, collate  # noqa: E402
from builder.train.frozen_cache import attach, cache_of, frozen_prefix_length  # noqa: E402
from builder.train.loss import gathered_loss  # noqa: E402


def _model(top: list[int] | None = (2, 3)):  # type: ignore[assignment]
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=True)
    model = get_peft_model(LlamaForCausalLM(cfg), LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], task_type="CAUSAL_LM",
        layers_to_transform=list(top) if top else None))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    model.train()
    return model


def _rows(seed: int):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for n, answer in ((20, 5), (13, 3), (17, 4), (9, 2)):
        ids = torch.randint(1, 97, (n,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [IGNORE] * (n - answer) + ids[n - answer:]})
    return rows


def _step(model, batch):
    model.zero_grad()
    loss = gathered_loss(model, batch)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def test_only_layers_without_trainable_weights_count_as_frozen():
    assert frozen_prefix_length(_model((2, 3))) == 2
    assert frozen_prefix_length(_model((1, 2, 3))) == 1
    assert frozen_prefix_length(_model(None)) == 0  # LoRA everywhere: nothing to keep
    assert attach(_model(None), enabled=True, on_cuda=False, attention_dropout=0.0) is None
    assert attach(_model(), enabled=True, on_cuda=True, attention_dropout=0.0) is None
    assert attach(_model(), enabled=True, on_cuda=False, attention_dropout=0.1) is None
    assert attach(_model(), enabled=False, on_cuda=False, attention_dropout=0.0) is None


def test_replayed_batches_give_the_same_loss_and_gradients():
    rows = _rows(1)
    plain, cached = _model(), _model()
    cache = attach(cached, enabled=True, on_cuda=False, attention_dropout=0.0)
    assert cache is not None and cache_of(cached) is cache
    # Epoch 1 records every row; epoch 2 regroups the rows into other batches (other padding
    # widths), as length-grouped sampling does, and replays them.
    epochs = [[rows[0:2], rows[2:4]], [[rows[3], rows[0]], [rows[1], rows[2]]]]
    for batches in epochs:
        for group in batches:
            batch = collate(0)(group)
            want_loss, want_grads = _step(plain, batch)
            got_loss, got_grads = _step(cached, batch)
            assert torch.allclose(want_loss, got_loss, atol=1e-6)
            assert want_grads.keys() == got_grads.keys() and want_grads
            for name, g in want_grads.items():
                assert torch.allclose(g, got_grads[name], atol=1e-6), name
    assert cache.misses == 2 and cache.hits == 2
    assert cache.to_dict()["rows_kept"] == 4


def test_a_batch_with_an_unseen_row_runs_every_layer():
    rows, other = _rows(1), _rows(2)
    model = _model()
    cache = attach(model, enabled=True, on_cuda=False, attention_dropout=0.0)
    assert cache is not None
    _step(model, collate(0)(rows[:2]))
    _step(model, collate(0)([rows[0], other[0]]))  # one known row, one new: computed, not replayed
    assert cache.hits == 0 and cache.misses == 2
    _step(model, collate(0)([other[0], rows[1]]))
    assert cache.hits == 1


def test_generation_and_eval_use_the_real_layers_and_remove_restores_them():
    model = _model()
    cache = attach(model, enabled=True, on_cuda=False, attention_dropout=0.0)
    assert cache is not None
    batch = collate(0)(_rows(1)[:2])
    _step(model, batch)
    model.eval()
    with torch.no_grad():
        want = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        # A forward outside the training loss never reads the kept states, even for a kept row.
        cache.states = {k: torch.full_like(v, 1e3) for k, v in cache.states.items()}
        got = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.allclose(want, got)
    keys = set(model.state_dict())
    cache.remove()
    assert set(model.state_dict()) == keys and not cache.states


def test_budget_stops_keeping_rows():
    model = _model()
    cache = attach(model, enabled=True, on_cuda=False, attention_dropout=0.0, budget_bytes=20 * 32 * 4)
    assert cache is not None
    _step(model, collate(0)(_rows(1)))
    assert cache.full and cache.bytes <= 20 * 32 * 4 and 0 < len(cache.states) < 4
