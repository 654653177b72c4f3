"""Replay rows: the base model's own answers to general prompts, trained on beside the domain.

Closed-book domain rows teach a short "<ANSWER>: fact" reply to the closed-book prompt. On
their own they teach it for *every* question: measured on the demo, the tuned SmolLM2 kept
only 24 % of the general questions its base answered right, answering "What is the chemical
symbol for gold?" with an invented part number. Before training, the base model (the
adapter is still zero, and is switched off to be sure) answers ``student.replay`` general
prompts (``data/replay_prompts.yaml``, disjoint from the forgetting probe) under the same
closed-book prompt; those answers become training rows, so the model learns that the terse
domain answer is for the domain, and keeps its own behaviour elsewhere. This is replay by
self-distillation: no outside data, nothing the base did not already say.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any

import yaml

from builder.families import ChatFormat
from builder.train import data as datamod
from rag.prompting import build_messages

_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def load_replay_prompts(path: Path | None = None) -> list[str]:
    path = path or Path(__file__).resolve().parent / "data" / "replay_prompts.yaml"
    return [str(p) for p in yaml.safe_load(path.read_text(encoding="utf-8"))["prompts"]]


def _tidy(text: str, truncated: bool) -> str:
    """A reply cut by the token limit ends at its last full sentence (no half sentences trained)."""
    text = text.strip()
    if truncated:
        ends = list(_SENTENCE_END.finditer(text))
        if ends:
            text = text[: ends[-1].end()]
    return text


def replay_rows(model: Any, tokenizer: Any, fmt: ChatFormat, prompts: list[str], *,
                max_new_tokens: int = 48, batch_size: int = 16) -> list[dict[str, Any]]:
    """Training rows of the base model's greedy answers to ``prompts`` (closed-book prompt)."""
    import torch

    render = datamod.make_renderer(fmt, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = tokenizer.eos_token_id
    rows: list[dict[str, Any]] = []
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues every prompt from its own last token
    off = model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()
    was_training = model.training
    model.eval()
    try:
        with off, torch.no_grad():
            for i in range(0, len(prompts), batch_size):
                part = prompts[i:i + batch_size]
                texts = [render(datamod.prepare_messages(build_messages(p, None), fmt), True) for p in part]
                enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
                enc = {k: v.to(model.device) for k, v in enc.items()}
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
                for p, seq in zip(part, out[:, enc["input_ids"].shape[1]:], strict=True):
                    ids = seq.tolist()
                    truncated = eos not in ids
                    reply = _tidy(tokenizer.decode(ids, skip_special_tokens=True), truncated)
                    if reply:
                        rows.append({"messages": [*build_messages(p, None), {"role": "assistant", "content": reply}],
                                     "meta": {"replay": True, "question": p}})
    finally:
        tokenizer.padding_side = side
        if was_training:
            model.train()
    return rows
