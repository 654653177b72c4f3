"""Epoch selection by closed-book knowledge, on the real SmolLM2 base model.

The answer NLL that breaks ties between epochs must rank a right answer above a wrong one,
and a tie in phrasings right must go to the epoch with the lower NLL; more right always wins.
"""

from __future__ import annotations

import pytest

pytest.importorskip("peft")

from builder.families import chat_format, get_family  # noqa: E402
from builder.train.knowledge import EpochScore, KnowledgeTracker, Probe, answer_nll  # noqa: E402


@pytest.fixture(scope="module")
def base():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from builder.train.base_model import resolve_base

    path = resolve_base(get_family("smollm2")).path
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def test_answer_nll_prefers_the_right_answer(base) -> None:
    model, tok = base
    fmt = chat_format("smollm2")
    qs = ["What is the capital of France?", "How many days are in a week?"]
    right = answer_nll(model, tok, fmt, qs, ["Paris", "7"])
    wrong = answer_nll(model, tok, fmt, qs, ["Tokyo", "31"])
    assert 0.0 < right < wrong, (right, wrong)


def test_tie_goes_to_lower_nll_and_more_right_wins() -> None:
    a = EpochScore(2.0, 0.4, 2, 5, answer_nll=1.9)
    b = EpochScore(3.0, 0.4, 2, 5, answer_nll=1.2)
    c = EpochScore(4.0, 0.2, 1, 5, answer_nll=0.3)
    assert b.beats(a) and not a.beats(b)
    assert not c.beats(a) and a.beats(c)
    assert a.beats(None)
    assert not EpochScore(3.0, 0.4, 2, 5).beats(a), "no NLL: a tie keeps the earlier epoch"


def test_tracker_keeps_the_epoch_nearer_the_answers(base) -> None:
    """Two 'epochs' tie on phrasings right: the second has its final norm halved, which
    scales every logit by 0.5 (the same greedy reply, a flatter distribution), so its answer
    NLL is higher and the first epoch's weights are the ones kept and restored."""
    import torch

    model, tok = base
    probes = [Probe("What is the capital of France?", "Paris")]
    tracker = KnowledgeTracker(probes, tok, chat_format("smollm2"), max_new_tokens=8)
    norm = model.model.norm.weight
    original = norm.detach().clone()
    norm.requires_grad_(True)
    try:
        first = tracker.on_epoch(model, 1.0)
        with torch.no_grad():
            norm.mul_(0.5)
        second = tracker.on_epoch(model, 2.0)
        assert second.answer_nll is not None and first.answer_nll is not None
        assert second.answer_nll > first.answer_nll
        assert (first.right, second.right) == (1, 1), "both 'epochs' answer Paris: a tie"
        assert tracker.best is first
        assert tracker.restore_best(model)
        assert torch.equal(norm.detach(), original)
        d = tracker.to_dict()
        assert d["history"][0]["answer_nll"] == first.answer_nll
    finally:
        with torch.no_grad():
            norm.copy_(original)
        norm.requires_grad_(False)
