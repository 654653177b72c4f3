"""Reuse the frozen bottom layers' output across epochs instead of recomputing it.

With ``student.lora.top_layers = N`` the bottom ``L - N`` decoder layers carry no adapter and
no trainable weight. Their output for a training row (the residual stream entering the first
adapted layer) is then the same in every epoch: the embeddings and those layers never change,
dropout is off, and with right padding and a causal mask a position never sees the padding
that its batch happens to add. The first time a row is trained on, the output of the last
frozen layer is kept (per row, real positions only); in later epochs a batch whose rows are
all known skips the frozen layers: the first frozen layer hands back the kept states and the
others pass them through. The adapted layers, the loss and the gradients are computed exactly
as before (tests/unit/builder/train/test_frozen_cache.py compares losses and gradients with
and without the cache).

Only the training forward of the gathered loss (builder.train.loss) uses it; generation,
evaluation and every other call run the real layers. The layers' ``forward`` is shadowed on
the instance, so module names and state dicts (checkpoints, adapters) are untouched.
It is on when it can be exact and fits the budget: CPU training (on a GPU the frozen layers
are cheap next to everything else, and the states would cost GPU memory), no trainable
parameter in or below the frozen layers, no attention dropout, and at most ``budget_bytes``
of kept states.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_BUDGET_BYTES = 2 * 1024**3


def _row_key(ids: Any) -> bytes:
    return hashlib.blake2b(ids.numpy().tobytes(), digest_size=16).digest()


def _decoder_layers(model: Any) -> Any:
    inner = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    decoder = inner.get_decoder() if callable(getattr(inner, "get_decoder", None)) else None
    return getattr(decoder, "layers", None), inner


def frozen_prefix_length(model: Any) -> int:
    """How many bottom decoder layers are frozen (no trainable parameter at or below them)."""
    layers, inner = _decoder_layers(model)
    if layers is None:
        return 0
    emb = inner.get_input_embeddings() if callable(getattr(inner, "get_input_embeddings", None)) else None
    if emb is None or any(p.requires_grad for p in emb.parameters()):
        return 0
    n = 0
    for layer in layers:
        if any(p.requires_grad for p in layer.parameters()):
            break
        n += 1
    return n if n < len(layers) else 0


class FrozenPrefixCache:
    """Kept outputs of the frozen bottom layers, per training row (see the module docstring)."""

    def __init__(self, model: Any, n_frozen: int, budget_bytes: int = DEFAULT_BUDGET_BYTES):
        layers, _ = _decoder_layers(model)
        self.layers = list(layers)[:n_frozen]
        self.budget_bytes = budget_bytes
        self.states: dict[bytes, Any] = {}
        self.bytes = 0
        self.full = False
        self.hits = 0
        self.misses = 0
        self._mode: str | None = None  # None: real layers; "record" or "replay" inside a training forward
        self._keys: list[bytes] = []
        self._lengths: list[int] = []
        self._tuple_out: bool | None = None
        for i, layer in enumerate(self.layers):
            layer.forward = self._make_forward(layer, i)

    def remove(self) -> None:
        """Give the layers their own forward back and drop the kept states."""
        for layer in self.layers:
            layer.__dict__.pop("forward", None)
        self.states.clear()
        self.bytes = 0

    def _make_forward(self, layer: Any, index: int) -> Any:
        real = type(layer).forward.__get__(layer)
        last = index == len(self.layers) - 1

        def forward(hidden_states: Any, *args: Any, **kwargs: Any) -> Any:
            if self._mode == "replay":
                h = self._assemble(hidden_states) if index == 0 else hidden_states
                return (h,) if self._tuple_out else h
            out = real(hidden_states, *args, **kwargs)
            if self._mode == "record" and last:
                self._tuple_out = isinstance(out, tuple)
                self._keep(out[0] if self._tuple_out else out)
            return out

        return forward

    def _assemble(self, like: Any) -> Any:
        import torch

        first = self.states[self._keys[0]]
        h = torch.zeros((like.shape[0], like.shape[1], first.shape[-1]), dtype=first.dtype, device=like.device)
        for r, (key, n) in enumerate(zip(self._keys, self._lengths, strict=True)):
            h[r, :n] = self.states[key]
        return h

    def _keep(self, h: Any) -> None:
        for r, (key, n) in enumerate(zip(self._keys, self._lengths, strict=True)):
            if key in self.states:
                continue
            state = h[r, :n].detach().clone()
            size = state.numel() * state.element_size()
            if self.bytes + size > self.budget_bytes:
                if not self.full:
                    log.info("frozen-layer cache full at %.0f MB: later rows run every layer", self.bytes / 1e6)
                self.full = True
                return
            self.states[key] = state
            self.bytes += size

    @contextlib.contextmanager
    def training_forward(self, input_ids: Any, attention_mask: Any) -> Iterator[None]:
        """Around one training forward: replay when every row of the batch is kept, else record."""
        lengths = attention_mask.sum(dim=1).tolist() if attention_mask is not None else [input_ids.shape[1]] * len(input_ids)
        self._lengths = [int(n) for n in lengths]
        self._keys = [_row_key(input_ids[r, :n].cpu()) for r, n in enumerate(self._lengths)]
        replay = self._tuple_out is not None and all(k in self.states for k in self._keys)
        self._mode = "replay" if replay else "record"
        if replay:
            self.hits += 1
        else:
            self.misses += 1
        try:
            yield
        finally:
            self._mode = None

    def to_dict(self) -> dict[str, Any]:
        return {"frozen_layers": len(self.layers), "rows_kept": len(self.states), "mb": round(self.bytes / 1e6, 1),
                "batches_replayed": self.hits, "batches_computed": self.misses, "full": self.full}


def attach(model: Any, enabled: bool, on_cuda: bool, attention_dropout: float | None,
           budget_bytes: int = DEFAULT_BUDGET_BYTES) -> FrozenPrefixCache | None:
    """A cache on ``model`` when it can be exact (see the module docstring), else None."""
    if not enabled or on_cuda or (attention_dropout or 0.0) > 0.0:
        return None
    n = frozen_prefix_length(model)
    if n == 0:
        return None
    cache = FrozenPrefixCache(model, n, budget_bytes)
    model._raftsmith_frozen_cache = cache
    return cache


def cache_of(model: Any) -> FrozenPrefixCache | None:
    return getattr(model, "_raftsmith_frozen_cache", None)
