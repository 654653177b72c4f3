"""Assistant-only loss that runs the output layer on the trained positions alone.

A RAFT row is mostly context: in the Kestrel sample 13 % of the tokens are the answer the
loss is taken on. The stock causal-LM forward still projects every position onto the whole
vocabulary (49,152 x 576 for SmolLM2) and backpropagates through those logits. Here the
decoder runs as usual, and only the hidden states whose next token carries a label go
through the output layer and the cross-entropy. The loss and gradients are the same as the
stock path's (tests/unit/builder/train/test_train_loss.py checks both); one training step is about 1.3x
faster on a CPU (benchmarks/train.py) and the logits' memory shrinks the same way on a GPU.

Models whose logits are post-processed (soft-capping, scaling) fall back to the stock path.
"""

from __future__ import annotations

from typing import Any

from builder.train.data import IGNORE
from builder.train.frozen_cache import cache_of

# Config attributes that change logits after the output projection in some architectures.
_LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def _unwrap(model: Any) -> Any:
    """The causal-LM module under a PEFT wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def supports_gathered_loss(model: Any) -> bool:
    inner = _unwrap(model)
    cfg = getattr(inner, "config", None)
    if cfg is None or not callable(getattr(inner, "get_decoder", None)):
        return False
    if not callable(getattr(inner, "get_output_embeddings", None)) or inner.get_output_embeddings() is None:
        return False
    for c in (cfg, getattr(cfg, "text_config", None)):
        if c is None:
            continue
        for attr in _LOGIT_POSTPROCESSING:
            value = getattr(c, attr, None)
            if value not in (None, 1, 1.0):
                return False
    return True


def gathered_loss(model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
    """Cross-entropy over the labelled next tokens only.

    ``num_items_in_batch`` (the Trainer's count of labelled tokens over a whole gradient
    accumulation window) turns the mean into sum / count, as the stock loss does.
    """
    import torch

    inner = _unwrap(model)
    decoder = inner.get_decoder()
    kwargs = {k: v for k, v in inputs.items() if k in ("attention_mask", "position_ids")}
    cache = cache_of(model) or cache_of(inner)
    if cache is not None and model.training and torch.is_grad_enabled():
        with cache.training_forward(inputs["input_ids"], inputs.get("attention_mask")):
            hidden = decoder(input_ids=inputs["input_ids"], **kwargs).last_hidden_state
    else:
        hidden = decoder(input_ids=inputs["input_ids"], **kwargs).last_hidden_state
    labels = inputs["labels"][:, 1:]
    keep = labels != IGNORE
    selected = hidden[:, :-1][keep]
    targets = labels[keep]
    if targets.numel() == 0:
        # A batch with nothing to learn: zero loss that still depends on the graph.
        return hidden.sum() * 0.0
    logits = inner.get_output_embeddings()(selected).float()
    if num_items_in_batch is None:
        return torch.nn.functional.cross_entropy(logits, targets)
    total = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
    count = num_items_in_batch.to(total.device) if torch.is_tensor(num_items_in_batch) else num_items_in_batch
    return total / count


def make_trainer_class() -> type:
    """transformers.Trainer with the gathered loss for training steps (evaluation keeps the stock path)."""
    from transformers import Trainer

    class AssistantLossTrainer(Trainer):
        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            if return_outputs or not supports_gathered_loss(model):
                self.loss_is_scaled_for_ga = None
                return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                            num_items_in_batch=num_items_in_batch)
            # Summed over the accumulation window's labelled tokens already when a count is given.
            self.loss_is_scaled_for_ga = num_items_in_batch is not None
            # The decoder is called directly, past the autocast wrapper accelerate puts around
            # the top-level forward: enter the same mixed-precision context here (bf16/fp16).
            with self.accelerator.autocast():
                return gathered_loss(model, inputs, num_items_in_batch)

    return AssistantLossTrainer
