"""student.adapter_scale through a real training run: the saved adapter is the trained one at strength s."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.integration

torch = pytest.importorskip("torch")
pytest.importorskip("peft")


def _rows(n: int) -> str:
    return "".join(json.dumps({"messages": [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": f"What is code {i} of the Quenfir set?"},
        {"role": "assistant", "content": f"<ANSWER>: Q-{i * 37 % 101}"}]}) + "\n" for i in range(n))


def _train(root, scale: float):
    from builder.train.run import run_train
    from rag.config import init_workspace, load_workspace

    ws = init_workspace(root, corpus_name="codes")
    (ws.training_dir / "codes.train.jsonl").write_text(_rows(8))
    text = ws.config_path.read_text()
    assert "  replay: 64" in text and "  adapter_scale: 1.0" in text
    ws.config_path.write_text(text.replace("  replay: 64", "  replay: 0")
                              .replace("  adapter_scale: 1.0", f"  adapter_scale: {scale}"))
    return run_train(load_workspace(ws.config_path), epochs=1)


def test_adapter_scale_is_baked_into_the_saved_adapter(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    monkeypatch.setenv("RAFTSMITH_THREADS", "1")
    full = _train(tmp_path / "full", 1.0)
    half = _train(tmp_path / "half", 0.5)
    assert half.adapter_scale == 0.5 and full.adapter_scale == 1.0
    meta = json.loads((half.run_dir / "run.json").read_text())
    assert meta["hyperparameters"]["adapter_scale"] == 0.5 and meta["adapter_scale"] == 0.5
    a = load_file(str(full.adapter_dir / "adapter_model.safetensors"))
    b = load_file(str(half.adapter_dir / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    lora_b = [k for k in a if "lora_B" in k]
    assert lora_b and any(float(a[k].abs().max()) > 0 for k in lora_b)  # the update is not zero
    for k in a:
        want = a[k] * 0.5 if "lora_B" in k else a[k]
        torch.testing.assert_close(b[k], want, rtol=1e-4, atol=1e-6)
    # the adapter config is unchanged: the scale is in the weights, for every consumer
    cfg_a = json.loads((full.adapter_dir / "adapter_config.json").read_text())
    cfg_b = json.loads((half.adapter_dir / "adapter_config.json").read_text())
    assert cfg_a["lora_alpha"] == cfg_b["lora_alpha"]
