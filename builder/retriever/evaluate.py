"""Recall@k of a retriever on eval questions whose oracle chunks are known.

A question counts as found at k when any of its oracle chunks is among the top k chunks,
searched the way ``raftsmith ask`` searches (the real Retriever: FAISS, FTS5, fusion).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from builder.retriever.pairs import Query

__all__ = ["KS", "recall_at_k"]

KS = (1, 5, 10)


def recall_at_k(retriever: Any, queries: Sequence[Query], modes: Sequence[str] = ("dense", "hybrid"),
                ks: Sequence[int] = KS) -> dict[str, dict[str, float]]:
    """{mode: {"recall@1": r, ...}} over ``queries``; empty when there are none."""
    if not queries:
        return {}
    out: dict[str, dict[str, float]] = {}
    depth = max(ks)
    for mode in modes:
        hits = retriever.search_many([q.question for q in queries], k=depth, mode=mode)
        ranks: list[int | None] = []
        for q, chunks in zip(queries, hits, strict=True):
            want = set(q.oracle_chunk_ids)
            ranks.append(next((i for i, c in enumerate(chunks, start=1) if c.chunk_id in want), None))
        out[mode] = {f"recall@{k}": round(sum(1 for r in ranks if r is not None and r <= k) / len(ranks), 4)
                     for k in ks}
    return out
