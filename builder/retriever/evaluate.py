"""Recall@k of a retriever on eval questions whose answers' chunks (or documents) are known.

A question counts as found at k when any of its oracle chunks is among the top k chunks,
searched the way ``raftsmith ask`` searches (the real Retriever: FAISS, FTS5, fusion). With
``unit="source"`` documents are ranked instead, each by the first of its chunks in the list,
so a long document split into several chunks does not crowd the others out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from builder.retriever.pairs import Query

__all__ = ["KS", "recall_at_k"]

KS = (1, 5, 10)


def _rank(chunks: Sequence[Any], q: Query, unit: str) -> int | None:
    if unit == "chunk":
        want = set(q.oracle_chunk_ids)
        return next((i for i, c in enumerate(chunks, start=1) if c.chunk_id in want), None)
    docs: list[str] = []
    for c in chunks:
        if c.source not in docs:
            docs.append(c.source)
    return next((i for i, s in enumerate(docs, start=1) if s in q.oracle_sources), None)


def recall_at_k(retriever: Any, queries: Sequence[Query], modes: Sequence[str] = ("dense", "hybrid"),
                ks: Sequence[int] = KS, *, unit: Literal["chunk", "source"] = "chunk",
                depth: int | None = None) -> dict[str, dict[str, float]]:
    """{mode: {"recall@1": r, ..., "mrr": m}} over ``queries`` (searched ``depth`` deep, default
    the largest k); empty when there are none."""
    if not queries:
        return {}
    out: dict[str, dict[str, float]] = {}
    for mode in modes:
        hits = retriever.search_many([q.question for q in queries], k=depth or max(ks), mode=mode)
        ranks = [_rank(chunks, q, unit) for q, chunks in zip(queries, hits, strict=True)]
        got = {f"recall@{k}": round(sum(1 for r in ranks if r is not None and r <= k) / len(ranks), 4) for k in ks}
        got["mrr"] = round(sum(1 / r for r in ranks if r) / len(ranks), 4)
        out[mode] = got
    return out
