"""Rank fusion and source diversity: pure functions, tested without models."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")

RRF_K = 60


def rrf_fuse(rankings: Sequence[Sequence[K]], k: int = RRF_K) -> list[tuple[K, float]]:
    """Reciprocal-rank fusion: score(d) = sum over rankings of 1 / (k + rank), rank from 1.

    Duplicates inside one ranking count at their first (best) position only. Ties break by
    the best single rank, then by first appearance, so the output is deterministic.
    """
    if k < 0:
        raise ValueError("k must be >= 0")
    scores: dict[K, float] = {}
    best: dict[K, int] = {}
    order: dict[K, int] = {}
    for ranking in rankings:
        seen: set[K] = set()
        for pos, key in enumerate(ranking, start=1):
            if key in seen:
                continue
            seen.add(key)
            scores[key] = scores.get(key, 0.0) + 1.0 / (k + pos)
            best[key] = min(best.get(key, pos), pos)
            order.setdefault(key, len(order))
    return sorted(scores.items(), key=lambda kv: (-kv[1], best[kv[0]], order[kv[0]]))


def limit_per_group(items: Sequence[T], group: Callable[[T], Hashable], max_per_group: int) -> list[T]:
    """Keep order, dropping items once their group already has ``max_per_group`` members."""
    if max_per_group < 1:
        raise ValueError("max_per_group must be >= 1")
    counts: dict[Hashable, int] = {}
    out: list[T] = []
    for item in items:
        g = group(item)
        if counts.get(g, 0) < max_per_group:
            counts[g] = counts.get(g, 0) + 1
            out.append(item)
    return out
