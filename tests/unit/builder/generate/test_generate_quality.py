"""Quote verification, near-duplicates, the chunk-disjoint split and the decontamination report."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from builder.generate.quality import (
    decontamination_report,
    near_duplicates,
    quote_in_chunks,
    split_by_chunk,
    verify_quotes,
)
from rag.types import Chunk

QB, QE = "##begin_quote##", "##end_quote##"
ORACLE = [Chunk("c1", "docs/a.md", "A", 1, 4, "The relay listens on\nTCP port   7431 by default.\n\n| Port | Use |\n| 9112 | admin |")]


def test_quote_verification_is_whitespace_normalized() -> None:
    assert quote_in_chunks("The relay listens on TCP port 7431 by default.", ORACLE)
    assert quote_in_chunks("  The relay listens on\n TCP port 7431 by default  ", ORACLE)
    assert quote_in_chunks('"TCP port 7431 by default"', ORACLE)  # wrapping quote marks
    assert quote_in_chunks("The relay listens on ... by default", ORACLE)  # parts in order around an ellipsis
    assert not quote_in_chunks("The relay listens on TCP port 7432 by default.", ORACLE)
    assert not quote_in_chunks("by default ... The relay listens", ORACLE)  # out of order
    assert not quote_in_chunks("", ORACLE)


def test_verify_quotes_counts_bad_and_missing() -> None:
    good = f"As stated, {QB}TCP port 7431 by default{QE} [1]."
    bad = f"{QB}TCP port 7431 by default{QE} and {QB}the relay is blue{QE}"
    assert verify_quotes(good, ORACLE, QB, QE).ok
    chk = verify_quotes(bad, ORACLE, QB, QE)
    assert not chk.ok and chk.bad == ["the relay is blue"]
    assert not verify_quotes("no quotes at all", ORACLE, QB, QE).ok


def _embed(vectors: dict[str, list[float]]):
    def embed(texts: list[str]) -> np.ndarray:
        m = np.array([vectors[t] for t in texts], dtype=np.float32)
        return m / np.linalg.norm(m, axis=1, keepdims=True)

    return embed


def test_near_duplicates_greedy_first_kept() -> None:
    vecs = {"a": [1, 0, 0], "a2": [0.99, 0.1, 0], "b": [0, 1, 0], "b2": [0, 0.97, 0.2], "c": [0, 0, 1]}
    dropped = near_duplicates(list(vecs), _embed(vecs), 0.95)
    assert set(dropped) == {1, 3} and dropped[1][0] == 0 and dropped[3][0] == 2
    assert near_duplicates(list(vecs), _embed(vecs), 0.999) == {}


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 15), min_size=1, max_size=3), min_size=1, max_size=40),
    st.floats(0.0, 0.9),
    st.integers(0, 3),
)
def test_split_never_shares_a_chunk(chunk_lists: list[list[int]], frac: float, seed: int) -> None:
    items = [(f"q{i}", [f"c{c}" for c in cs]) for i, cs in enumerate(chunk_lists)]
    split = split_by_chunk(items, frac, seed)
    assert set(split) == {i for i, _ in items}
    train_chunks = {c for i, cs in items if split[i] == "train" for c in cs}
    eval_chunks = {c for i, cs in items if split[i] == "eval" for c in cs}
    assert not train_chunks & eval_chunks
    # order-independent
    assert split_by_chunk(list(reversed(items)), frac, seed) == split


def test_split_fraction_and_force_train() -> None:
    items = [(f"q{i}", [f"c{i}"]) for i in range(100)]
    split = split_by_chunk(items, 0.2, 0)
    assert sum(v == "eval" for v in split.values()) == 20
    forced = split_by_chunk(items, 0.2, 0, force_train={i for i, s in split.items() if s == "eval"})
    assert all(forced[i] == "train" for i, s in split.items() if s == "eval")
    assert split_by_chunk(items, 0.0, 0) == {i: "train" for i, _ in items}


def _row(i: str, q: str, split: str, oracle: list[str], distract: list[str]) -> dict:
    return {"meta": {"id": i, "question": q, "split": split, "oracle_chunk_ids": oracle, "distractor_chunk_ids": distract}}


def test_decontamination_report_counts_overlaps() -> None:
    rows = [
        _row("t1", "What port?", "train", ["c1"], ["c9"]),
        _row("t2", "Which fan?", "train", ["c2"], ["c3"]),
        _row("e1", "what  PORT?", "eval", ["c3"], ["c1"]),
        _row("e2", "Who?", "eval", ["c2"], []),
    ]
    vecs = {"What port?": [1, 0], "Which fan?": [0, 1], "what  PORT?": [1, 0.05], "Who?": [0.6, 0.8]}
    rep = decontamination_report(rows, _embed(vecs), 0.95)
    assert rep.train == 2 and rep.eval == 2
    assert rep.shared_oracle_chunks == 1  # c2
    assert rep.exact_question_overlap == 1  # case/space-normalized
    assert rep.eval_oracles_in_train_context == 2  # c3 as a train distractor, c2 as a train oracle
    assert rep.eval_near_train == 1 and rep.max_cosine is not None and rep.max_cosine > 0.99
    assert rep.closest[0] == {"eval_id": "e1", "train_id": "t1", "cosine": rep.max_cosine}
