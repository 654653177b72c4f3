"""Reciprocal-rank fusion and per-source limits, against hand-computed cases and invariants."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rag.index.fusion import limit_per_group, rrf_fuse
from rag.index.store import fts_query


def test_rrf_hand_computed() -> None:
    dense = ["a", "b", "c"]
    bm25 = ["c", "a", "d"]
    fused = dict(rrf_fuse([dense, bm25], k=60))
    assert fused["a"] == pytest.approx(1 / 61 + 1 / 62)
    assert fused["c"] == pytest.approx(1 / 63 + 1 / 61)
    assert fused["b"] == pytest.approx(1 / 62)
    assert fused["d"] == pytest.approx(1 / 63)
    order = [key for key, _ in rrf_fuse([dense, bm25], k=60)]
    # a: 1/61+1/62 > c: 1/61+1/63 > b: 1/62 > d: 1/63
    assert order == ["a", "c", "b", "d"]


def test_rrf_k_zero_and_ties_break_by_best_rank() -> None:
    # x is 1st in one list, y is 1st in the other: equal scores, tie broken by first appearance
    out = rrf_fuse([["x", "y"], ["y", "x"]], k=0)
    assert [key for key, _ in out] == ["x", "y"]
    assert out[0][1] == pytest.approx(1.5)
    # equal score, but one has the better single rank: 1/(1+1)+... vs two middling ranks
    out = rrf_fuse([["p", "q", "r"], ["r", "q", "p"]], k=1)
    scores = dict(out)
    assert scores["p"] == pytest.approx(scores["r"])
    assert [key for key, _ in out][:2] == ["p", "r"]  # both best rank 1: first appearance wins
    assert scores["q"] == pytest.approx(2 / 3)


def test_rrf_duplicates_in_one_ranking_count_once() -> None:
    assert dict(rrf_fuse([["a", "a", "b"]], k=60)) == pytest.approx({"a": 1 / 61, "b": 1 / 63})


def test_rrf_rejects_negative_k() -> None:
    with pytest.raises(ValueError):
        rrf_fuse([["a"]], k=-1)


rankings = st.lists(st.lists(st.integers(0, 30), max_size=20, unique=True), min_size=1, max_size=4)


@given(rankings)
def test_rrf_properties(lists: list[list[int]]) -> None:
    fused = rrf_fuse(lists, k=60)
    keys = [key for key, _ in fused]
    assert len(keys) == len(set(keys)) == len({x for ranking in lists for x in ranking})
    scores = [s for _, s in fused]
    assert scores == sorted(scores, reverse=True)
    # brute force: the score is the sum of reciprocal ranks
    for key, score in fused:
        expected = sum(1 / (60 + r.index(key) + 1) for r in lists if key in r)
        assert score == pytest.approx(expected)


@given(rankings)
def test_rrf_single_ranking_keeps_order(lists: list[list[int]]) -> None:
    only = lists[0]
    assert [key for key, _ in rrf_fuse([only])] == only


@given(st.lists(st.tuples(st.integers(0, 5), st.integers()), max_size=40), st.integers(1, 4))
def test_limit_per_group(items: list[tuple[int, int]], cap: int) -> None:
    out = limit_per_group(items, lambda t: t[0], cap)
    for g in {t[0] for t in items}:
        assert sum(1 for t in out if t[0] == g) == min(cap, sum(1 for t in items if t[0] == g))
    it = iter(items)
    assert all(any(x is y for y in it) for x in out)  # a subsequence, order kept


@pytest.mark.parametrize("text", ['"unbalanced', "a AND (b OR", "NEAR(x y)", "col:value*", "E-417?", "-", "ü ß ok"])
def test_fts_query_is_always_quoted(text: str) -> None:
    import sqlite3

    expr = fts_query(text)
    con = sqlite3.connect(":memory:")
    con.execute("CREATE VIRTUAL TABLE t USING fts5(x)")
    con.execute("INSERT INTO t VALUES ('the E-417 code and unbalanced near x value ok')")
    if expr:
        con.execute("SELECT * FROM t WHERE t MATCH ?", (expr,)).fetchall()  # no syntax error


@given(st.text(max_size=60))
def test_fts_query_never_breaks_sqlite(text: str) -> None:
    import sqlite3

    expr = fts_query(text)
    con = sqlite3.connect(":memory:")
    con.execute("CREATE VIRTUAL TABLE t USING fts5(x)")
    if expr:
        con.execute("SELECT * FROM t WHERE t MATCH ?", (expr,)).fetchall()


# --- weighted RRF, score fusion, document aggregation, identifier forms -----------------------

def test_weighted_rrf_and_equal_weights_match_plain() -> None:
    from rag.index.fusion import rrf_fuse as fuse

    lists = [["a", "b"], ["b", "c"]]
    assert fuse(lists, weights=(1.0, 1.0)) == fuse(lists)
    heavy = dict(fuse(lists, k=60, weights=(1.5, 0.5)))
    assert heavy["a"] == pytest.approx(1.5 / 61)
    assert heavy["b"] == pytest.approx(1.5 / 62 + 0.5 / 61)
    with pytest.raises(ValueError):
        fuse(lists, weights=(1.0,))


def test_score_fusion_hand_computed() -> None:
    from rag.index.fusion import score_fuse

    dense = [("a", 0.9), ("b", 0.5), ("c", 0.1)]
    lexical = [("c", 12.0), ("d", 2.0)]
    fused = dict(score_fuse(dense, lexical, dense_weight=0.5))
    assert fused == pytest.approx({"a": 0.5, "b": 0.25, "c": 0.5, "d": 0.0})
    order = [key for key, _ in score_fuse(dense, lexical, 0.5)]
    assert order == ["a", "c", "b", "d"]  # a and c tie at 0.5: dense order first
    assert [key for key, _ in score_fuse(dense, lexical, 1.0)][:3] == ["a", "b", "c"]
    assert [key for key, _ in score_fuse(dense, lexical, 0.0)][0] == "c"
    assert dict(score_fuse([("x", 0.3)], [], 0.5)) == {"x": 0.5}  # one candidate: normalised to 1
    with pytest.raises(ValueError):
        score_fuse(dense, lexical, 1.5)


def test_document_aggregation_lifts_documents_with_several_hits() -> None:
    from rag.index.fusion import aggregate_groups

    ranked = [("d1", 1), ("d2", 1), ("d2", 2), ("d3", 1), ("d2", 3)]
    out = aggregate_groups(ranked, lambda x: x[0], decay=0.5, k=60)
    # d2: 1/62 + 0.5/63 + 0.25/65 > d1: 1/61 > d3: 1/64
    assert out == [("d2", 1), ("d2", 2), ("d2", 3), ("d1", 1), ("d3", 1)]
    assert aggregate_groups(ranked, lambda x: x[0], decay=0.0) == [("d1", 1), ("d2", 1), ("d2", 2), ("d2", 3), ("d3", 1)]


def test_identifier_forms_keep_the_whole_token_and_split_camel_case() -> None:
    from rag.index.store import identifier_forms

    forms = identifier_forms("Call torch.hub.load(...) with relay.listen_port and MultipleNegativesRankingLoss.")
    assert "torchhubload" in forms and "relaylistenport" in forms
    assert {"multiple", "negatives", "ranking", "loss"} <= set(forms)
    assert identifier_forms("plain words only, nothing else") == []
    assert len(forms) == len(set(forms))


def test_fts_query_adds_identifier_forms() -> None:
    q = fts_query("what does torch.hub.load return")
    assert '"torch"' in q and '"hub"' in q and '"torchhubload"' in q
