"""The gathered assistant-only loss equals the stock causal-LM loss, value and gradients."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from builder.train.data import IGNORE, collate  # noqa: E402
from builder.train.loss import gathered_loss, supports_gathered_loss  # noqa: E402


def _tiny_lora_model(seed: int = 0, top_layers: list[int] | None = None):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    lcfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                      task_type="CAUSAL_LM", layers_to_transform=top_layers)
    peft_model = get_peft_model(model, lcfg)
    # LoRA B starts at zero; give it values so the adapter changes the output.
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return peft_model


def _batch():
    g = torch.Generator().manual_seed(1)
    rows = []
    for n, answer in ((20, 5), (13, 3), (17, 0)):  # the last row has no labelled token at all
        ids = torch.randint(0, 97, (n,), generator=g).tolist()
        labels = [IGNORE] * (n - answer) + ids[n - answer:]
        rows.append({"input_ids": ids, "labels": labels})
    return collate(0)(rows)


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


def test_same_loss_and_gradients_as_the_stock_path():
    batch = _batch()
    stock = _tiny_lora_model()
    ref = stock(**batch).loss
    ref.backward()
    ours_model = _tiny_lora_model()
    ours = gathered_loss(ours_model, batch)
    ours.backward()
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    g_ref, g_ours = _grads(stock), _grads(ours_model)
    assert g_ref.keys() == g_ours.keys() and g_ref
    for name in g_ref:
        torch.testing.assert_close(g_ours[name], g_ref[name], rtol=1e-4, atol=1e-6)


def test_sum_over_item_count_for_gradient_accumulation():
    batch = _batch()
    model = _tiny_lora_model()
    n_items = int((batch["labels"][:, 1:] != IGNORE).sum())
    mean = gathered_loss(model, batch).item()
    # Twice as many items in the accumulation window: half the contribution of this batch.
    assert gathered_loss(model, batch, torch.tensor(2 * n_items)).item() == pytest.approx(mean / 2, rel=1e-5)
    assert gathered_loss(model, batch, n_items).item() == pytest.approx(mean, rel=1e-5)


def test_batch_without_labels_gives_zero_loss_with_a_graph():
    batch = _batch()
    batch["labels"][:] = IGNORE
    loss = gathered_loss(_tiny_lora_model(), batch)
    assert loss.item() == 0.0
    loss.backward()  # must not raise: the zero still hangs off the graph


def test_top_layers_only_adapts_those_layers():
    model = _tiny_lora_model(top_layers=[2])
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(".layers.2." in n for n in names)
    loss = gathered_loss(model, _batch())
    loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad)


def test_softcapped_models_keep_the_stock_path():
    model = _tiny_lora_model()
    assert supports_gathered_loss(model)
    model.get_base_model().config.final_logit_softcapping = 30.0
    assert not supports_gathered_loss(model)


def test_trainer_runs_the_gathered_decoder_under_mixed_precision(tmp_path):
    """bf16 training must reach the decoder's layers as bf16, as the stock forward does."""
    from transformers import TrainingArguments

    from builder.train.loss import make_trainer_class

    model = _tiny_lora_model()
    seen: list[torch.dtype] = []
    layer = model.get_base_model().model.layers[0].self_attn.q_proj
    layer.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    rows = [{"input_ids": list(range(1, 12)), "labels": [IGNORE] * 8 + [9, 10, 11]}] * 2
    args = TrainingArguments(output_dir=str(tmp_path), bf16=True, use_cpu=True, max_steps=1,
                             per_device_train_batch_size=2, report_to=[], save_strategy="no",
                             logging_strategy="no")
    trainer = make_trainer_class()(model=model, args=args, train_dataset=rows, data_collator=collate(0))
    trainer.train()
    assert seen and all(d == torch.bfloat16 for d in seen), seen
