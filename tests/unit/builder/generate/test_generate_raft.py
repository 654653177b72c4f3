"""RAFT assembly without models: distractor sampling, oracle probability, determinism, rows."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from builder.generate.raft import (
    RaftItem,
    build_row,
    hard_negatives_below,
    reference_completion,
    sample_context,
    sentences,
    supporting_sentence,
)
from rag.prompting import ANSWER_MARK, build_messages, extract_answer, extract_quotes
from rag.types import Chunk

QB, QE = "##begin_quote##", "##end_quote##"


def chunk(i: int, text: str | None = None) -> Chunk:
    return Chunk(f"c{i:03d}", f"docs/f{i}.md", f"H{i}", 1, 3, text or f"Chunk number {i} talks about item {i}.")


POOL = [chunk(i) for i in range(40)]
ORACLE = [POOL[0]]
HARD = POOL[1:9]


def test_oracle_probability_matches_p_over_many_items() -> None:
    n, p = 4000, 0.8
    hits = sum(
        sample_context(f"q{i}", ORACLE, HARD, POOL, n_distractors=4, p_oracle=p, seed=3).has_oracle for i in range(n)
    )
    # binomial: 5 standard deviations is a test that fails on a wrong p, never by chance
    sd = math.sqrt(n * p * (1 - p))
    assert abs(hits - n * p) < 5 * sd
    assert sum(sample_context(f"q{i}", ORACLE, HARD, POOL, n_distractors=4, p_oracle=0.0).has_oracle for i in range(200)) == 0
    assert all(sample_context(f"q{i}", ORACLE, HARD, POOL, n_distractors=4, p_oracle=1.0).has_oracle for i in range(200))


def test_distractors_mix_hard_and_random_and_exclude_oracle() -> None:
    ctx = sample_context("q1", ORACLE, HARD, POOL, n_distractors=4, p_oracle=1.0)
    ids = [c.chunk_id for c in ctx.distractors]
    assert len(ids) == len(set(ids)) == 4 and "c000" not in ids
    assert ids[:2] == ["c001", "c002"]  # half are hard negatives, best-ranked first
    assert len(ctx.documents) == 5 and {c.chunk_id for c in ctx.documents} == {"c000", *ids}
    without = sample_context("q-none", ORACLE, HARD, POOL, n_distractors=4, p_oracle=0.0)
    assert len(without.documents) == 4 and "c000" not in {c.chunk_id for c in without.documents}
    assert without.oracle == ORACLE  # the answer is still the oracle's


def test_random_distractors_spread_over_the_pool() -> None:
    seen: dict[str, int] = {}
    for i in range(600):
        for c in sample_context(f"q{i}", ORACLE, HARD, POOL, n_distractors=4, p_oracle=1.0).distractors[2:]:
            seen[c.chunk_id] = seen.get(c.chunk_id, 0) + 1
    assert "c000" not in seen
    randoms = [v for k, v in seen.items() if k not in {"c001", "c002"}]
    assert len(randoms) >= 30 and max(randoms) < 4 * (sum(randoms) / len(randoms))


def test_small_pool_fills_from_hard_negatives() -> None:
    ctx = sample_context("q", ORACLE, HARD[:5], POOL[:6], n_distractors=5, p_oracle=1.0)
    assert len(ctx.distractors) == 5 and "c000" not in [c.chunk_id for c in ctx.distractors]


@settings(max_examples=60, deadline=None)
@given(st.text(min_size=1, max_size=12), st.integers(0, 8), st.floats(0, 1), st.integers(0, 5))
def test_sampling_is_deterministic_per_id(item_id: str, n: int, p: float, seed: int) -> None:
    a = sample_context(item_id, ORACLE, HARD, POOL, n_distractors=n, p_oracle=p, seed=seed)
    b = sample_context(item_id, ORACLE, HARD, POOL, n_distractors=n, p_oracle=p, seed=seed)
    assert [c.chunk_id for c in a.documents] == [c.chunk_id for c in b.documents]
    assert a.has_oracle == b.has_oracle and len(a.distractors) == n


def test_order_is_shuffled_not_fixed() -> None:
    positions = {sample_context(f"q{i}", ORACLE, HARD, POOL, n_distractors=4, p_oracle=1.0).doc_number("c000") for i in range(200)}
    assert positions == {1, 2, 3, 4, 5}


def test_hard_negatives_are_ranked_below_the_oracle() -> None:
    hits = [POOL[5], POOL[0], POOL[6], POOL[7]]
    assert [c.chunk_id for c in hard_negatives_below(hits, {"c000"})] == ["c006", "c007"]
    assert [c.chunk_id for c in hard_negatives_below(hits, {"zzz"})] == ["c005", "c000", "c006", "c007"]


def test_reference_completion_quotes_the_supporting_sentence() -> None:
    oracle = chunk(0, "## Ports\n\nThe admin console listens on TCP port 9112. The relay uses port 7431 for ingest.\n")
    ctx = sample_context("q", [oracle], HARD, POOL, n_distractors=2, p_oracle=1.0)
    content, quotes = reference_completion("Which port does the relay use?", "7431", ctx, quote_begin=QB, quote_end=QE)
    assert quotes == ["The relay uses port 7431 for ingest."]
    assert extract_quotes(content, QB, QE) == quotes and extract_answer(content) == "7431"
    assert f"[{ctx.doc_number('c000')}]" in content
    ctx0 = sample_context("q", [oracle], HARD, POOL, n_distractors=2, p_oracle=0.0)
    content0, quotes0 = reference_completion("Which port?", "7431", ctx0, quote_begin=QB, quote_end=QE)
    assert content0 == f"{ANSWER_MARK} 7431" and quotes0 == []


def test_sentences_split_tables_bullets_and_prose() -> None:
    text = "Intro line one\ncontinues here. Second sentence.\n\n- bullet `kxctl x`\n| a | b |\n"
    assert sentences(text) == ["Intro line one continues here.", "Second sentence.", "bullet `kxctl x`", "| a | b |"]
    assert supporting_sentence("kxctl x", "which command", [chunk(1, text)])[1] == "bullet `kxctl x`"
    assert supporting_sentence("absent", "q", [chunk(1, text)]) is None


def test_row_uses_the_shared_prompt_format() -> None:
    ctx = sample_context("q", ORACLE, HARD, POOL, n_distractors=2, p_oracle=1.0)
    item = RaftItem(id="q", question="What?", answer="x", category="c", split="train", context=ctx)
    row = build_row(item, "<ANSWER>: x", {"id": "q"})
    assert row["messages"][:-1] == build_messages("What?", ctx.documents)
    assert row["messages"][-1] == {"role": "assistant", "content": "<ANSWER>: x"}
