"""BM25 on a large index leaves out the query's most common terms beyond a postings budget:
real SQLite/FTS5, a store where one word is in every chunk and others in a few."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rag.index import store as store_mod
from rag.index.store import ChunkRow, IndexStore

pytestmark = pytest.mark.integration

N = 400


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("bm25budget")
    store = IndexStore(d)
    v = np.zeros(8, dtype=np.float32)
    with store.transaction():
        # "relay" in every chunk, "port" in every 4th, "heartbeat" in every 50th, "kx7" in chunk 7 only;
        # "running" in every 10th (the porter stemmer makes "runs" match it too)
        texts = []
        for i in range(N):
            words = ["relay", f"filler{i}"]
            words += ["port"] if i % 4 == 0 else []
            words += ["heartbeat"] if i % 50 == 0 else []
            words += ["running"] if i % 10 == 0 else []
            words += ["kx7"] if i == 7 else []
            texts.append(" ".join(words))
        store.insert_chunks((ChunkRow(f"{i:064x}", f"d{i}.md", "Doc", 1, 2, None, 0, 1, t, 4, str(i)), v)
                            for i, t in enumerate(texts))
    store.close()
    return d


def _ro(d: Path) -> IndexStore:
    return IndexStore(d, readonly=True)


def test_plan_drops_the_common_words_first(store_dir: Path) -> None:
    s = _ro(store_dir)
    try:
        terms = ["relay", "port", "heartbeat", "kx7"]
        # counts: relay 400, port 100, heartbeat 8, kx7 1
        assert s.bm25_plan(terms, 1000) == (terms, False)  # all fit: nothing dropped
        assert s.bm25_plan(terms, 120) == (["port", "heartbeat", "kx7"], False)  # 1 + 8 + 100 fit, relay does not
        assert s.bm25_plan(terms, 50) == (["heartbeat", "kx7"], False)
        # the count is FTS5's own match, stemming included: "runs" counts the 40 chunks with "running"
        assert s.bm25_plan(["relay", "runs"], 45) == (["runs"], False)
        # even the rarest over the budget: the three rarest, rarest first, matched two at a time
        assert s.bm25_plan(["relay", "port", "heartbeat"], 6) == (["heartbeat", "port", "relay"], True)
        # counts stop at 20x the budget: past it, terms tie and keep the query's order
        assert s.bm25_plan(["relay", "port", "heartbeat", "kx7"], 0) == (["kx7", "heartbeat", "relay"], True)
        assert s.bm25_plan(["relay", "port"], 30) == (["port", "relay"], True)
        assert s.bm25_plan(["relay"], 30) == (["relay"], False)
    finally:
        s.close()


def test_conjunctive_when_every_term_is_common(store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_mod, "BM25_BUDGET_FROM", 10)
    weights = ", ".join(map(str, store_mod.BM25_WEIGHTS))
    s = _ro(store_dir)
    try:
        # port 100 and heartbeat 8 both over 5: the chunks with both (every 100th) first, then
        # the rest of the rarest term's (heartbeat: every 50th) to fill the list
        got = [i for i, _ in s.bm25("port heartbeat", 50, budget=5)]
        both = [int(r) for r, in s.con.execute(
            f"SELECT rowid FROM chunks_fts WHERE chunks_fts MATCH ? ORDER BY bm25(chunks_fts, {weights}) LIMIT 50",
            ('"port" AND "heartbeat"',))]
        assert len(both) == N // 100 and got[:len(both)] == both
        assert set(got) == {i for i, _ in s.bm25("heartbeat", 50, budget=0)}
        # a limit the pairs fill alone: no second query
        assert [i for i, _ in s.bm25("port heartbeat", 3, budget=5)] == both[:3]
    finally:
        s.close()


def test_large_index_bm25_leaves_out_the_common_terms(store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = _ro(store_dir)
    try:
        full = s.bm25("relay heartbeat", 20)
        assert len(full) == 20  # below BM25_BUDGET_FROM: every term, so "relay" fills the list
        monkeypatch.setattr(store_mod, "BM25_BUDGET_FROM", 10)
        pruned = s.bm25("relay heartbeat", 20, budget=50)
        assert [i for i, _ in pruned] == [i for i, _ in s.bm25("heartbeat", 20)]
        assert len(pruned) == N // 50
        # the heartbeat chunks rank first in both: what the budget drops is the tail a common word adds
        assert {i for i, _ in full[:N // 50]} == {i for i, _ in pruned}
        # with room for every term nothing changes
        assert s.bm25("relay heartbeat", 20, budget=10_000) == full
    finally:
        s.close()


def test_budget_zero_and_chat_bm25_budget(store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rag.config import ChatConfig, EmbeddingConfig
    from rag.retrieve import Retriever

    monkeypatch.setattr(store_mod, "BM25_BUDGET_FROM", 10)
    s = _ro(store_dir)
    try:
        everything = s.bm25("relay heartbeat", 20, budget=0)  # 0: every term, even on a large index
        assert len(everything) == 20 and everything == s.bm25("relay OR heartbeat", 20, budget=0)
        heartbeat = [i for i, _ in s.bm25("heartbeat", 20)]
    finally:
        s.close()
    # the setting reaches the store through the Retriever (chat.bm25_budget)
    with Retriever(store_dir, EmbeddingConfig(), chat=ChatConfig(bm25_budget=50)) as r:
        hits = r.search("relay heartbeat", k=20, mode="bm25")
        assert len(hits) == len(heartbeat)
    with Retriever(store_dir, EmbeddingConfig(), chat=ChatConfig(bm25_budget=0)) as r:
        assert len(r.search("relay heartbeat", k=20, mode="bm25")) == 20
