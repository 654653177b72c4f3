"""Index kinds at scale: build time, query-side RSS, p50 hybrid query latency (dense + BM25 +
the chunk rows from SQLite) and recall@10 against exact search, for flat, HNSW and IVF-PQ.

    nice -n 19 .venv/bin/python benchmarks/index_scale.py [--sizes 100000,1000000]

The SQLite store keeps the vectors as --vector-dtypes says (float16, as a new index does, by
default; "float32,float16" measures both side by side), and FAISS is built from them as ingest
builds it; recall is against exact search over the float32 originals.

Vectors are synthetic: random unit vectors around topics (one centre per 100 chunks, as in
benchmarks/retrieval.py's scale test), 384-d like MiniLM; the text is synthetic words in the
real SQLite/FTS5 store. Queries are stored vectors plus noise of norm ~1 (cosine ~0.7 to
their source, like real questions to their answers) with 8 random words. Query-side RSS is
measured in a fresh process that only loads the FAISS file (the store is read from disk).
Adds its sizes to benchmarks/results/index_scale.json.

``--stream`` (for 10M) never holds the vectors whole: each block of 100k is drawn from its own
seed, inserted and committed, and drawn again where the exact top 10 is needed. FAISS is built
and calibrated from the store a block at a time, as ingest builds it. The queries then run in a
fresh process that opens the index as the laptop does (a Retriever; query vectors given, so no
embedder is loaded) and reports that process's peak RSS, with the dense, BM25 and hybrid p50s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import numpy as np  # noqa: E402
from retrieval import rss_mb, say  # noqa: E402

import rag.index.store as store_mod  # noqa: E402
from rag.config import EmbeddingConfig  # noqa: E402
from rag.index.store import (  # noqa: E402
    FAISS_NAME,
    HNSW_M,
    NEW_VECTOR_DTYPE,
    ChunkRow,
    IndexStore,
    StoreVectors,
    build_faiss,
    build_faiss_from,
    calibrate,
    calibrate_from,
    exact_top_k,
    query_terms,
    save_faiss,
    top_k_over,
)
from rag.retrieve import Retriever  # noqa: E402

DIM = 384
RSS_PROBE = """
import resource, sys, faiss
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024
before = rss()
index = faiss.read_index(sys.argv[1])
print(before, rss())
"""


def query_rss_mb(faiss_path: Path) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", RSS_PROBE, str(faiss_path)], capture_output=True, text=True,
                         check=True).stdout.split()
    before, after = float(out[0]), float(out[1])
    return {"rss_mb": round(after, 1), "index_mb": round(after - before, 1)}


def synthetic_row(i: int, text: str) -> ChunkRow:
    """Chunk ``i`` of a synthetic corpus (20 chunks a document, 60 words a chunk)."""
    return ChunkRow(f"{i:064x}", f"doc{i // 20}.md", f"Doc {i // 20} > Part {i % 20}", 1, 5, None, 0, 1, text, 60, f"{i}")


def recall_at_10(got: list[list[int]], truth: np.ndarray) -> float:
    """Mean share of each query's exact top 10 (rows of ``truth``) found in its ``got``."""
    return round(float(np.mean([len(set(g) & set(t.tolist())) / 10 for g, t in zip(got, truth, strict=True)])), 4)


def bench(n: int, work: Path, kinds: tuple[str, ...] = ("flat", "hnsw", "ivfpq"), queries: int = 200,
          vector_dtype: str = NEW_VECTOR_DTYPE) -> dict[str, Any]:
    import numpy as np

    rnd = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(20000)]
    d = work / f"scale-{n}-{vector_dtype}"
    store = IndexStore(d)
    store.set_meta("vector_dtype", vector_dtype)  # float32: an index as raftsmith wrote it before float16
    store.vector_dtype = vector_dtype
    centres = rnd.standard_normal((max(1, n // 100), DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    vecs = np.empty((n, DIM), dtype=np.float32)
    for s in range(0, n, 100_000):  # in blocks: the noise matrix never exists whole
        m = min(100_000, n - s)
        v = centres[rnd.integers(0, len(centres), m)] + rnd.standard_normal((m, DIM)).astype(np.float32) / np.sqrt(DIM)
        vecs[s:s + m] = v / np.linalg.norm(v, axis=1, keepdims=True)
    t0 = time.perf_counter()
    with store.transaction():
        words = rnd.integers(0, len(vocab), size=(n, 60))
        store.insert_chunks(
            (synthetic_row(i, " ".join(vocab[j] for j in words[i])), vecs[i]) for i in range(n))
        store.set_meta("generation", "1")
        store.set_meta("embedding_model", "default")
    row: dict[str, Any] = {"vectors": "synthetic clustered unit vectors (1 centre per 100), 384-d",
                           "vector_dtype": vector_dtype, "sqlite_insert_s": round(time.perf_counter() - t0, 1),
                           "store_mb": round((d / "store.sqlite").stat().st_size / 1e6, 1)}
    # FAISS is built from the store's vectors, as ingest builds it; truth is exact float32 search
    _ids, from_store = store.all_vectors()
    ids = np.arange(1, n + 1, dtype=np.int64)
    picks = rnd.choice(n, queries, replace=False)
    qv = vecs[picks] + rnd.standard_normal((queries, DIM)).astype(np.float32) / np.sqrt(DIM)
    qv /= np.linalg.norm(qv, axis=1, keepdims=True)
    qtext = [" ".join(vocab[j] for j in rnd.integers(0, len(vocab), 8)) for _ in range(queries)]
    truth = exact_top_k(vecs, ids, qv, 10)
    for kind in kinds:
        say(f"{n}: {kind}")
        t0 = time.perf_counter()
        index = hnsw_float32(ids, from_store) if kind == "hnsw-float32" else build_faiss(ids, from_store, kind, DIM)
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        search = calibrate(index, from_store, ids, 0.95)
        calib_s = time.perf_counter() - t0
        store.set_meta("faiss_kind", kind.split("-")[0])
        save_faiss(d, index, {"generation": 1, "faiss_kind": kind.split("-")[0], "search": search})
        del index
        res: dict[str, Any] = {"build_s": round(build_s, 1), "calibrate_s": round(calib_s, 1),
                               "search": {k: v for k, v in search.items() if k != "tried"},
                               "faiss_file_mb": round((d / FAISS_NAME).stat().st_size / 1e6, 1),
                               "query_side": query_rss_mb(d / FAISS_NAME)}
        with Retriever(d, EmbeddingConfig()) as r:
            got = [[int(i) for i, _ in r._dense(q, 10)] for q in qv]
            res["recall@10_vs_flat"] = recall_at_10(got, truth)
            for mode in ("dense", "hybrid"):
                lat = []
                for i in range(queries):
                    t0 = time.perf_counter()
                    r._search_one(qtext[i], qv[i], 5, mode, False)
                    lat.append((time.perf_counter() - t0) * 1000)
                res[f"{mode}_p50_ms"] = round(statistics.median(lat), 2)
        row[kind] = res
        say(f"{n} {kind}: {json.dumps(res)}")
    store.close()
    row["peak_rss_mb"] = round(rss_mb(), 1)
    return row


STREAM_BLOCK = 100_000
VOCAB = 20_000
#: --text zipf: a vocabulary this large, word of rank r drawn with probability ~ 1/r (as in real text:
#: the commonest word in nearly every chunk, most words in a few)
ZIPF_VOCAB = 500_000


def _zipf_cdf() -> np.ndarray:
    p = 1.0 / np.arange(1, ZIPF_VOCAB + 1)
    return np.cumsum(p / p.sum())


def _words(rnd: np.random.Generator, shape: tuple[int, ...], text: str) -> np.ndarray:
    if text == "zipf":
        return np.minimum(np.searchsorted(_ZIPF_CDF, rnd.random(shape)), ZIPF_VOCAB - 1)
    return rnd.integers(0, VOCAB, size=shape)


_ZIPF_CDF = _zipf_cdf()


def _stream_block(b: int, n: int, centres: np.ndarray, text: str = "uniform") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Block ``b`` of the streamed corpus: (ids, float32 unit vectors, word indexes), the same
    every time it is drawn."""
    rnd = np.random.default_rng((7, b))
    start = b * STREAM_BLOCK
    m = min(STREAM_BLOCK, n - start)
    v = centres[rnd.integers(0, len(centres), m)] + rnd.standard_normal((m, DIM)).astype(np.float32) / np.sqrt(DIM)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return np.arange(start + 1, start + m + 1, dtype=np.int64), v, _words(rnd, (m, 60), text)


def stream_key(n: int, text: str) -> str:
    return f"stream_{n}" if text == "uniform" else f"stream_{n}_{text}"


def bench_stream(n: int, work: Path, kind: str = "ivfpq", queries: int = 200, text: str = "uniform") -> dict[str, Any]:
    """One size, one kind, in bounded memory (see the module docstring)."""
    rnd = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(ZIPF_VOCAB if text == "zipf" else VOCAB)]
    d = work / stream_key(n, text).replace("_", "-")
    store = IndexStore(d)
    centres = rnd.standard_normal((max(1, n // 100), DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    blocks = (n + STREAM_BLOCK - 1) // STREAM_BLOCK
    picks = np.sort(rnd.choice(n, queries, replace=False))
    qv = np.empty((queries, DIM), dtype=np.float32)
    t0 = time.perf_counter()
    for b in range(blocks):
        ids, vecs, words = _stream_block(b, n, centres, text)
        here = (picks >= b * STREAM_BLOCK) & (picks < b * STREAM_BLOCK + len(ids))
        qv[here] = vecs[picks[here] - b * STREAM_BLOCK]
        with store.transaction():  # one commit per block, as ingest commits its batches
            store.insert_chunks(
                (synthetic_row(i, " ".join(vocab[j] for j in words[r])), vecs[r]) for r, i in enumerate(ids.tolist()))
        if b % 10 == 9 or b == blocks - 1:
            say(f"{n}: inserted {int(ids[-1]):,} rows, {time.perf_counter() - t0:.0f} s")
    with store.transaction():
        store.set_meta("generation", "1")
        store.set_meta("embedding_model", "default")
    row: dict[str, Any] = {"vectors": "synthetic clustered unit vectors (1 centre per 100), 384-d, drawn per block",
                           "text": (f"60 words a chunk, 8 a query, drawn with P(rank r) ~ 1/r from {ZIPF_VOCAB:,}"
                                    if text == "zipf" else f"60 words a chunk, 8 a query, uniform over {VOCAB:,}"),
                           "vector_dtype": store.vector_dtype, "streamed": True,
                           "sqlite_insert_s": round(time.perf_counter() - t0, 1),
                           "store_mb": round((d / "store.sqlite").stat().st_size / 1e6, 1)}
    qv += rnd.standard_normal((queries, DIM)).astype(np.float32) / np.sqrt(DIM)
    qv /= np.linalg.norm(qv, axis=1, keepdims=True)
    qtext = [" ".join(vocab[j] for j in _words(rnd, (8,), text)) for _ in range(queries)]
    t0 = time.perf_counter()
    truth = top_k_over((_stream_block(b, n, centres, text)[:2] for b in range(blocks)), qv, 10)
    row["exact_truth_s"] = round(time.perf_counter() - t0, 1)
    say(f"{n}: {kind}")
    source = StoreVectors(store)
    t0 = time.perf_counter()
    index = build_faiss_from(source, kind, DIM)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    search = calibrate_from(index, source, 0.95)
    calib_s = time.perf_counter() - t0
    with store.transaction():
        store.set_meta("faiss_kind", kind)
    save_faiss(d, index, {"generation": 1, "faiss_kind": kind, "search": search})
    del index, source
    store.close()
    res: dict[str, Any] = {"build_s": round(build_s, 1), "calibrate_s": round(calib_s, 1),
                           "search": {k: v for k, v in search.items() if k != "tried"},
                           "search_tried": search.get("tried"),
                           "faiss_file_mb": round((d / FAISS_NAME).stat().st_size / 1e6, 1),
                           "faiss_only": query_rss_mb(d / FAISS_NAME)}
    np.savez(d / "queries.npz", qv=qv, truth=truth, qtext=np.array(qtext))
    res["query_side"] = query_side(d)
    row[kind] = res
    row["build_peak_rss_mb"] = round(rss_mb(), 1)
    say(f"{n} {kind}: {json.dumps(res)}")
    return row


def query_side(d: Path) -> dict[str, Any]:
    say(f"{d.name}: queries in a fresh process")
    out = subprocess.run([sys.executable, __file__, "--query-phase", str(d)], capture_output=True, text=True,
                         check=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def query_phase(d: Path) -> dict[str, Any]:
    """The laptop's side in this process alone: open the index, run every query dense, BM25 and
    hybrid; peak RSS (VmHWM) and RSS after, recall@10 of the dense search against exact."""
    data = np.load(d / "queries.npz")
    qv, truth, qtext = data["qv"], data["truth"], [str(t) for t in data["qtext"]]
    out: dict[str, Any] = {}
    with Retriever(d, EmbeddingConfig()) as r:
        t0 = time.perf_counter()
        r._index()
        out["faiss_load_s"] = round(time.perf_counter() - t0, 1)
        got = [[int(i) for i, _ in r._dense(q, 10)] for q in qv]
        out["recall@10_vs_flat"] = recall_at_10(got, truth)
        def run(mode: str) -> tuple[list[float], list[list[str]]]:
            lat, got = [], []
            for i in range(len(qv)):
                t0 = time.perf_counter()
                hits = r._search_one(qtext[i], None if mode == "bm25" else qv[i], 10 if mode == "bm25" else 5, mode,
                                     False)
                lat.append((time.perf_counter() - t0) * 1000)
                got.append([c.chunk_id for c in hits])
            return lat, got

        out["nprobe_sweep"] = nprobe_sweep(r, qv, truth)
        run("bm25")  # a pass to warm the page cache, not timed
        for mode in ("dense", "bm25", "hybrid"):
            lat, _ = run(mode)
            out[f"{mode}_p50_ms"] = round(statistics.median(lat), 2)
            out[f"{mode}_p90_ms"] = round(float(np.percentile(lat, 90)), 2)
        out["bm25_budget"] = bm25_budgets(r, run, qtext)
        status = {line.split(":")[0]: line.split()[1] for line in Path("/proc/self/status").read_text().splitlines()
                  if line.startswith(("VmHWM", "VmRSS"))}
        out["peak_rss_mb"] = round(int(status["VmHWM"]) / 1024, 1)
        out["rss_mb"] = round(int(status["VmRSS"]) / 1024, 1)
    return out


def nprobe_sweep(r: Retriever, qv: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """IVF indexes: recall@10 against exact and the dense p50 at nprobe values up to the calibrated
    one (the recall a faster setting would give up); the calibrated value is set back after."""
    from rag.index.store import _inner, apply_search_params, index_kind

    index = r._index()
    if index_kind(index) not in ("ivf", "ivfpq"):
        return {}
    chosen = int(_inner(index).nprobe)
    res: dict[str, Any] = {}
    for v in sorted({v for v in (16, 64, 256, 1024, 4096, chosen) if v <= chosen}):
        apply_search_params(index, {"nprobe": v})
        lat, got = [], []
        for q in qv:
            t0 = time.perf_counter()
            got.append([i for i, _ in r._dense(q, 10)])
            lat.append((time.perf_counter() - t0) * 1000)
        res[str(v)] = {"recall@10_vs_flat": recall_at_10(got, truth),
            "dense_p50_ms": round(statistics.median(lat), 2)}
    apply_search_params(index, {"nprobe": chosen})
    return res


def bm25_budgets(r: Retriever, run: Any, qtext: list[str]) -> dict[str, Any]:
    """BM25 and hybrid at several postings budgets, each beside BM25 over every query term: p50s,
    how much of the all-terms top 10 (BM25) and top 5 (hybrid) each keeps, and the terms kept."""
    default_from, default_budget = store_mod.BM25_BUDGET_FROM, store_mod.BM25_POSTINGS_BUDGET
    res: dict[str, Any] = {"budget_applies_above_chunks": default_from, "default_budget": default_budget}
    store_mod.BM25_BUDGET_FROM = 1 << 62
    _, all_bm25 = run("bm25")
    lat_b, _ = run("bm25")
    lat_h, all_hybrid = run("hybrid")
    res["all_terms"] = {"bm25_p50_ms": round(statistics.median(lat_b), 2),
                        "hybrid_p50_ms": round(statistics.median(lat_h), 2),
                        "terms_mean": round(float(np.mean([len(query_terms(q)) for q in qtext])), 2)}
    store_mod.BM25_BUDGET_FROM = default_from
    try:
        for budget in sorted({2_000, 5_000, default_budget, 20_000}):
            store_mod.BM25_POSTINGS_BUDGET = budget
            lat_b, got_b = run("bm25")
            lat_h, got_h = run("hybrid")
            plans = [r.store.bm25_plan(query_terms(q), budget) if r.store._chunk_rows() > default_from
                     else (query_terms(q), False) for q in qtext]
            res[str(budget)] = {
                "bm25_p50_ms": round(statistics.median(lat_b), 2), "hybrid_p50_ms": round(statistics.median(lat_h), 2),
                "bm25_top10_overlap": _overlap(got_b, all_bm25), "hybrid_top5_overlap": _overlap(got_h, all_hybrid),
                "terms_kept_mean": round(float(np.mean([len(k) for k, _ in plans])), 2),
                "conjunctive_share": round(float(np.mean([c for _, c in plans])), 3)}
    finally:
        store_mod.BM25_POSTINGS_BUDGET = default_budget
    return res


def _overlap(got: list[list[str]], ref: list[list[str]]) -> float | None:
    pairs = [(set(g), set(f)) for g, f in zip(got, ref, strict=True) if f]
    return round(float(np.mean([len(g & f) / len(f) for g, f in pairs])), 4) if pairs else None


def hnsw_float32(ids: Any, vecs: Any) -> Any:
    """HNSW over float32 vectors, as raftsmith built it before float16 (kind 'hnsw-float32')."""
    import faiss

    base = faiss.IndexHNSWFlat(DIM, HNSW_M, faiss.METRIC_INNER_PRODUCT)
    base.hnsw.efConstruction, base.hnsw.efSearch = 100, 128
    index = faiss.IndexIDMap(base)
    index.add_with_ids(vecs.astype("float32"), ids)
    return index


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="100000")
    ap.add_argument("--kinds", default="flat,hnsw,ivfpq",
                    help="HNSW's build is ~7 min per million here; 'hnsw-float32' is HNSW over float32 vectors, as "
                         "built before float16")
    ap.add_argument("--vector-dtypes", default=NEW_VECTOR_DTYPE,
                    help="the store's vector dtype; 'float32,float16' runs both side by side (key vector_dtype_N)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "index_scale.json")
    ap.add_argument("--stream", action="store_true",
                    help="bounded memory (for 10M): one kind (the first of --kinds), vectors drawn per block, the "
                         "queries in a fresh process; key stream_N")
    ap.add_argument("--work", type=Path,
                    help="--stream: where the stores go, kept after (default: a temporary folder, removed after)")
    ap.add_argument("--queries-only", action="store_true",
                    help="--stream with --work: run only the query phase again over the stores kept there")
    ap.add_argument("--text", choices=("uniform", "zipf"), default="uniform",
                    help="--stream: the chunks' words uniform over 20k (as the other sizes) or Zipf-distributed; "
                         "key stream_N or stream_N_zipf")
    ap.add_argument("--query-phase", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.query_phase:
        print(json.dumps(query_phase(args.query_phase)))
        return
    if args.stream:
        with contextlib.ExitStack() as stack:
            work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="raftsmith-index-scale-")))
            for n in [int(s) for s in args.sizes.split(",") if s.strip()]:
                key = stream_key(n, args.text)
                if args.queries_only:
                    row = json.loads(args.out.read_text())[key]
                    row[args.kinds.split(",")[0]]["query_side"] = query_side(work / key.replace("_", "-"))
                else:
                    row = bench_stream(n, work, args.kinds.split(",")[0], text=args.text)
                saved = json.loads(args.out.read_text()) if args.out.is_file() else {}
                saved[key] = row
                args.out.write_text(json.dumps(saved, indent=2) + "\n")
        print(f"written to {args.out}")
        return
    result: dict[str, Any] = json.loads(args.out.read_text()) if args.out.is_file() else {}
    dtypes = [t for t in args.vector_dtypes.split(",") if t.strip()]
    with tempfile.TemporaryDirectory(prefix="raftsmith-index-scale-") as tmp:
        for n in [int(s) for s in args.sizes.split(",") if s.strip()]:
            rows: dict[str, Any] = {t: bench(n, Path(tmp), tuple(args.kinds.split(",")), vector_dtype=t) for t in dtypes}
            if len(rows) == 1:
                result[str(n)] = rows[dtypes[0]]
                continue
            a, b = rows[dtypes[0]], rows[dtypes[-1]]
            rows["ratios"] = {"store_mb": round(b["store_mb"] / a["store_mb"], 3), **{
                f"{kind} {m}": round(b[kind][m] / a[kind][m], 3) if a[kind][m] else None
                for kind in args.kinds.split(",") for m in ("hybrid_p50_ms", "recall@10_vs_flat")}}
            rows["ratios_are"] = f"{dtypes[-1]} / {dtypes[0]}, measured in this run"
            result[f"vector_dtype_{n}"] = rows
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
