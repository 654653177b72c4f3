"""student.adapter_scale: the saved adapter is the trained update scaled by s, for every consumer."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from builder.train.scale import bake_scale, set_adapter_scale  # noqa: E402


def _base():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg)


def _model():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_base(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"],
                                            task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    model.eval()
    return model


def _merged_weights(model):
    import copy

    merged = copy.deepcopy(model).merge_and_unload()
    return {k: v.detach().clone() for k, v in merged.state_dict().items()}


def test_baked_scale_is_the_interpolation_between_base_and_tuned_after_save_and_reload(tmp_path):
    from peft import PeftModel

    model = _model()
    ids = torch.tensor([[5, 17, 33, 2, 64, 8]])
    with torch.no_grad():
        full = model(input_ids=ids).logits
        with model.disable_adapter():
            base_logits = model(input_ids=ids).logits
    full_w = _merged_weights(model)
    assert set_adapter_scale(model, 0.6) == 4  # q_proj and down_proj in 2 layers
    with torch.no_grad():
        at_runtime = model(input_ids=ids).logits
    bake_scale(model, 0.6)
    with torch.no_grad():
        baked = model(input_ids=ids).logits
    torch.testing.assert_close(baked, at_runtime)
    assert not torch.allclose(baked, full) and not torch.allclose(baked, base_logits)

    # What export does: reload the saved adapter onto a fresh base and merge it.
    model.save_pretrained(tmp_path / "adapter")
    base_w = _base().state_dict()
    merged = _merged_weights(PeftModel.from_pretrained(_base(), str(tmp_path / "adapter")))
    adapted = [k for k in merged if "q_proj" in k or "down_proj" in k]
    assert len(adapted) == 4
    for key, w in merged.items():
        torch.testing.assert_close(w, base_w[key] + 0.6 * (full_w[key] - base_w[key]))


def test_scale_one_changes_nothing():
    model = _model()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    bake_scale(model, 1.0)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_config_rejects_a_scale_outside_zero_to_one():
    from pydantic import ValidationError

    from rag.config import StudentConfig

    assert StudentConfig().adapter_scale == 1.0
    assert StudentConfig(adapter_scale=0.75).adapter_scale == 0.75
    for bad in (0, 1.5, -0.2):
        with pytest.raises(ValidationError):
            StudentConfig(adapter_scale=bad)
