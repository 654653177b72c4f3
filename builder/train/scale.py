"""Adapter strength: the trained LoRA update scaled towards the base, baked into the weights.

Interpolating a fine-tuned model back towards its base (WiSE-FT, Wortsman et al. 2022) keeps
more of what the base knew. With LoRA the interpolation is exact and free: the merged weight
is ``W + s * B @ A``, so an adapter scaled by ``s`` is the model a fraction ``s`` of the way
from base to tuned. ``student.adapter_scale`` bakes ``s`` into every B matrix before the
adapter is saved, so the saved adapter, the merged GGUF, the adapter GGUF and the Ollama
ADAPTER all carry it with nothing else to pass along.

Measured on the ferrow benchmark domain (SmolLM2-135M, the default recipe, base + adapter in
llama.cpp, one run side by side; benchmarks/results/adapter_scale-ferrow.json): at s = 0.75
closed book stayed at 0.60 on 58 held-out phrasings while retention on the forgetting probe
rose from 0.63 to 0.71; at s = 0.5 closed book fell to 0.47 (retention 0.79). Choosing ``s``
automatically after training was tried: the eval split's 5-6 held-out phrasings are too few
to tell 0.9 from 1.0, and the training phrasings the adapter gets right barely move between
1.0 and 0.5, so the default stays 1.0 and the setting is the user's.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def _lora_layers(model: Any) -> Iterator[Any]:
    for module in model.modules():
        if hasattr(module, "lora_B") and hasattr(module, "set_scale") and len(module.lora_B):
            yield module


def set_adapter_scale(model: Any, scale: float) -> int:
    """Run every LoRA layer at ``scale`` x its configured strength (not baked in); returns the
    number of LoRA layers."""
    n = 0
    for layer in _lora_layers(model):
        for name in layer.lora_B:
            layer.set_scale(name, scale)
        n += 1
    return n


def bake_scale(model: Any, scale: float) -> None:
    """Multiply every LoRA B matrix by ``scale`` (runtime scaling back at 1.0), so the saved
    adapter is exactly the scaled one for every consumer."""
    import torch

    set_adapter_scale(model, 1.0)
    if scale == 1.0:
        return
    with torch.no_grad():
        for layer in _lora_layers(model):
            for b in layer.lora_B.values():
                b.weight.mul_(scale)
