"""index.kind auto: flat, HNSW or IVF-PQ by size and memory budget; exact top-k by brute force."""

from __future__ import annotations

import numpy as np

from rag.index.store import HNSW_MAX, HNSW_THRESHOLD, choose_kind, exact_top_k, resident_bytes


def test_auto_picks_by_size() -> None:
    assert choose_kind("auto", 10) == "flat"
    assert choose_kind("auto", HNSW_THRESHOLD) == "flat"
    assert choose_kind("auto", HNSW_THRESHOLD + 1) == "hnsw"
    assert choose_kind("auto", 2_000_000, 384, memory_budget_mb=8000) == "hnsw"
    assert choose_kind("auto", HNSW_MAX + 1, 384, memory_budget_mb=1e9) == "ivfpq"
    assert choose_kind("auto", 10_000_000, 384, memory_budget_mb=4000) == "ivfpq"


def test_memory_budget_moves_the_switch() -> None:
    # 1M x 384 float16 vectors + graph is ~1.0 GB (measured 1.05 KB a vector at 100k): HNSW
    # under a 4 GB budget, IVF-PQ under 1 GB
    assert 0.9e9 < resident_bytes("hnsw", 1_000_000, 384) < 1.1e9
    assert choose_kind("auto", 1_000_000, 384, memory_budget_mb=4000) == "hnsw"
    assert choose_kind("auto", 1_000_000, 384, memory_budget_mb=1000) == "ivfpq"
    # IVF-PQ at 10M: 48-byte codes + 8-byte ids, well under the 4 GB
    assert resident_bytes("ivfpq", 10_000_000, 384) < 0.7e9


def test_forced_kind_is_kept() -> None:
    for kind in ("flat", "hnsw", "ivf", "ivfpq"):
        assert choose_kind(kind, 5) == kind


def test_exact_top_k_matches_a_full_sort() -> None:
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((700_000 // 1000, 16)).astype(np.float32)
    ids = np.arange(100, 100 + len(vecs), dtype=np.int64)
    q = rng.standard_normal((5, 16)).astype(np.float32)
    got = exact_top_k(vecs, ids, q, 7)
    want = ids[np.argsort(-(q @ vecs.T), axis=1)[:, :7]]
    assert [set(r) for r in got.tolist()] == [set(r) for r in want.tolist()]
