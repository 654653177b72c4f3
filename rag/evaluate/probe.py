"""The forgetting probe: what tuning cost the model's general knowledge.

General questions with short, unambiguous answers (``data/general_knowledge.yaml``, written
for raftsmith, shipped in the package) are asked closed book of every model; an answer is
right when it states one of the listed answers (the headline content match). Retention is
the share of the base model's right answers that a tuned model still gets right.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from rag.errors import ConfigError
from rag.evaluate.metrics import correct_match

if TYPE_CHECKING:
    from rag.answer import Answerer


@dataclass
class ProbeItem:
    id: str
    question: str
    answers: list[str]


def load_probe(path: Path | None = None) -> list[ProbeItem]:
    """The packaged general-knowledge questions (rag/data/general_knowledge.yaml), or ``path``."""
    path = path or Path(__file__).resolve().parent / "data" / "general_knowledge.yaml"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"Cannot read the forgetting probe {path}: {err}") from None
    items = [ProbeItem(str(it["id"]), str(it["question"]), [str(a) for a in it["answers"]])
             for g in data["questions"] for it in g["items"]]
    if not items or any(not it.answers for it in items):
        raise ConfigError(f"{path}: every probe item needs an id, a question and a list of answers.")
    return items


def probe_correct(prediction: str, answers: Sequence[str]) -> bool:
    return any(correct_match(prediction, a) for a in answers)


def probe_model(engine: Answerer, model: str, items: Sequence[ProbeItem], backend: str | None = None,
                max_tokens: int = 24, on_item: Callable[[int], None] | None = None) -> dict[str, str]:
    """One model's closed-book answers to the probe items, by item id."""
    answers: dict[str, str] = {}
    for i, it in enumerate(items, start=1):
        if on_item is not None:
            on_item(i)
        res = engine.answer(it.question, model=model, backend=backend, rag=False, event="eval",
                            max_tokens=max_tokens, extra={"probe_item": it.id})
        answers[it.id] = res.answer
    return answers


def probe_summary(items: Sequence[ProbeItem], models: Sequence[str], answers: dict[str, dict[str, str]],
                  max_tokens: int = 24) -> dict[str, Any]:
    """Right answers per model and each tuned model's retention of what the base knew.

    ``retention`` of a model is the share of the base model's right answers that it still
    gets right (1.0 = nothing the base knew was lost); ``right`` counts each model's own.
    """
    right = {m: {it.id for it in items if probe_correct(answers[m][it.id], it.answers)} for m in models}
    out: dict[str, Any] = {"n": len(items), "max_tokens": max_tokens,
                           "right": {m: len(r) for m, r in right.items()}, "retention": {}}
    base = right.get("base")
    for model, got in right.items():
        if base is not None and model != "base":
            out["retention"][model] = round(len(got & base) / len(base), 4) if base else None
    out["rows"] = [{"id": it.id, "question": it.question, "answers": it.answers,
                    **{f"{m}_answer": answers[m][it.id] for m in models},
                    **{f"{m}_right": it.id in right[m] for m in models}} for it in items]
    return out
