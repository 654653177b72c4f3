"""Rank fusion and source diversity: pure functions, tested without models."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")

RRF_K = 60


def rrf_fuse(rankings: Sequence[Sequence[K]], k: int = RRF_K,
             weights: Sequence[float] | None = None) -> list[tuple[K, float]]:
    """Reciprocal-rank fusion: score(d) = sum over rankings of w / (k + rank), rank from 1
    (every weight 1 unless ``weights`` gives one per ranking).

    Duplicates inside one ranking count at their first (best) position only. Ties break by
    the best single rank, then by first appearance, so the output is deterministic.
    """
    if k < 0:
        raise ValueError("k must be >= 0")
    if weights is not None and len(weights) != len(rankings):
        raise ValueError("one weight per ranking")
    scores: dict[K, float] = {}
    best: dict[K, int] = {}
    order: dict[K, int] = {}
    for n, ranking in enumerate(rankings):
        w = 1.0 if weights is None else float(weights[n])
        seen: set[K] = set()
        for pos, key in enumerate(ranking, start=1):
            if key in seen:
                continue
            seen.add(key)
            scores[key] = scores.get(key, 0.0) + w / (k + pos)
            best[key] = min(best.get(key, pos), pos)
            order.setdefault(key, len(order))
    return sorted(scores.items(), key=lambda kv: (-kv[1], best[kv[0]], order[kv[0]]))


def _minmax(scored: Sequence[tuple[K, float]]) -> dict[K, float]:
    """Scores of one ranker mapped onto [0, 1] for this query (best 1, worst 0; all equal: 1)."""
    if not scored:
        return {}
    values = [s for _, s in scored]
    lo, hi = min(values), max(values)
    span = hi - lo
    return {key: (1.0 if span <= 0 else (s - lo) / span) for key, s in scored}


def score_fuse(dense: Sequence[tuple[K, float]], lexical: Sequence[tuple[K, float]],
               dense_weight: float = 0.5) -> list[tuple[K, float]]:
    """Score fusion: w * dense + (1 - w) * lexical, each min-max normalised over this query's
    candidates; a candidate one ranker did not return gets 0 from it. Unlike RRF this keeps how
    far apart the scores are, so a clear winner of one ranker stays on top. Ties break by the
    dense order, then the lexical order."""
    if not 0.0 <= dense_weight <= 1.0:
        raise ValueError("dense_weight must be between 0 and 1")
    d, b = _minmax(dense), _minmax(lexical)
    first: dict[K, int] = {}
    for key, _ in [*dense, *lexical]:
        first.setdefault(key, len(first))
    fused = {key: dense_weight * d.get(key, 0.0) + (1.0 - dense_weight) * b.get(key, 0.0) for key in first}
    return sorted(fused.items(), key=lambda kv: (-kv[1], first[kv[0]]))


def aggregate_groups(ranked: Sequence[T], group: Callable[[T], Hashable], decay: float = 0.5,
                     k: int = RRF_K) -> list[T]:
    """Document-level aggregation: a group (document) scores sum_i decay^i / (k + rank_i) over its
    items in rank order, so several hits of one document lift it above a document with one hit
    at a similar rank. Items come back grouped, best group first, each group in its own order."""
    if not 0.0 <= decay <= 1.0:
        raise ValueError("decay must be between 0 and 1")
    members: dict[Hashable, list[T]] = {}
    score: dict[Hashable, float] = {}
    for rank, item in enumerate(ranked, start=1):
        g = group(item)
        n = len(members.setdefault(g, []))
        members[g].append(item)
        score[g] = score.get(g, 0.0) + decay ** n / (k + rank)
    first = {g: i for i, g in enumerate(members)}
    return [item for g in sorted(members, key=lambda g: (-score[g], first[g])) for item in members[g]]


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
