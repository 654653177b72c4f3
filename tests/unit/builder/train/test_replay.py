"""Replay prompts: shipped, and disjoint from the forgetting probe that measures what they protect."""

from __future__ import annotations

from builder.train.replay import _tidy, load_replay_prompts
from rag.evaluate import load_probe


def test_replay_prompts_are_shipped_and_never_the_probe() -> None:
    prompts = load_replay_prompts()
    assert len(prompts) == len(set(prompts)) >= 60
    probe = {it.question.strip().lower().rstrip("?") for it in load_probe()}
    assert not probe & {p.strip().lower().rstrip("?") for p in prompts}


def test_a_cut_reply_ends_at_its_last_full_sentence() -> None:
    assert _tidy("Paris is the capital. It has the Eiffel", truncated=True) == "Paris is the capital."
    assert _tidy("Paris is the capital. It has the Eiffel", truncated=False) == "Paris is the capital. It has the Eiffel"
    assert _tidy("No sentence end at all", truncated=True) == "No sentence end at all"
