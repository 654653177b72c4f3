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
from builder.train.knowledge import closed_book_replies
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
    off = model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()
    with off:
        replies = closed_book_replies(model, tokenizer, fmt, prompts, max_new_tokens=max_new_tokens,
                                      batch_size=batch_size)
    rows: list[dict[str, Any]] = []
    for p, (text, truncated) in zip(prompts, replies, strict=True):
        reply = _tidy(text, truncated)
        if reply:
            rows.append({"messages": [*build_messages(p, None), {"role": "assistant", "content": reply}],
                         "meta": {"replay": True, "question": p}})
    return rows
