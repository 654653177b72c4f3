"""Embedding backends side by side: chunks/s and dense recall of embedding.backend torch (fp32
and precision 'auto'), onnx and onnx-int8, in one run, on the APIBench TorchHub corpus and the
Kestrel sample.

    nice -n 19 .venv/bin/python benchmarks/embedding_backends.py [--data DIR] [--rounds 3]

Each corpus is ingested once per backend through the real pipeline (so the texts are the ones
ingest embeds: context, heading, chunk); recall@k is measured with that index and the same
backend on the query side (dense search, documents ranked as benchmarks/retrieval.py does).
Throughput: every backend encodes all chunk texts of a corpus, backends alternating within
each round, so a neighbour's load hits all of them alike; the median round is reported, with
the ratio to torch fp32 and to torch 'auto' (today's default). The ONNX export and int8
quantization are timed once, in a fresh cache folder. Writes
benchmarks/results/embedding_backends.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from retrieval import (  # noqa: E402
    answer_ranks,
    apibench_workspace,
    doc_ranks,
    kestrel_workspace,
    rss_mb,
    say,
    summarize,
)

from rag.config import EmbeddingConfig  # noqa: E402
from rag.index.embedder import TextEmbedder, load_embedder  # noqa: E402
from rag.ingest.pipeline import ingest  # noqa: E402
from rag.retrieve import Retriever  # noqa: E402

#: (name, embedding.backend, embedding.precision)
BACKENDS: list[tuple[str, str, str]] = [("torch fp32", "torch", "fp32"), ("torch auto", "torch", "auto"),
                                        ("onnx", "onnx", "auto"), ("onnx-int8", "onnx-int8", "auto")]


def chunk_texts(index_dir: Path) -> list[str]:
    """The texts ingest embedded (embed_text: context, heading, chunk)."""
    con = sqlite3.connect(f"file:{index_dir / 'store.sqlite'}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT context, heading, text FROM chunks ORDER BY id").fetchall()
    finally:
        con.close()
    return ["\n".join(p for p in row if p) for row in rows]


def recall_and_texts(data: Path, work: Path) -> tuple[dict[str, Any], dict[str, list[str]]]:
    out: dict[str, Any] = {}
    texts: dict[str, list[str]] = {}
    corpora: dict[str, Any] = {"apibench": lambda root: apibench_workspace(data, root), "kestrel": kestrel_workspace}
    for corpus, make in corpora.items():
        out[corpus] = {}
        for name, backend, precision in BACKENDS:
            ws, questions, gold = make(work / f"{corpus}-{backend}-{precision}")
            ws.config.embedding.backend = backend  # type: ignore[assignment]
            ws.config.embedding.precision = precision  # type: ignore[assignment]
            t0 = time.perf_counter()
            report = ingest(ws)
            ingest_s = time.perf_counter() - t0
            texts.setdefault(corpus, chunk_texts(ws.index_dir))
            with Retriever.from_workspace(ws) as r:
                results = r.search_many(questions, k=50, mode="dense")
                lat = []
                for q in questions[:40]:
                    t0 = time.perf_counter()
                    r.embed([q])
                    lat.append((time.perf_counter() - t0) * 1000)
            ranks = answer_ranks(results, gold) if corpus == "kestrel" else doc_ranks(results, gold)
            out[corpus][name] = {"chunks": report.total_chunks, "questions": len(questions),
                                 "ingest_s": round(ingest_s, 2), "dense": summarize(ranks),
                                 "query_embed_ms_p50": round(statistics.median(lat), 2)}
            say(f"{corpus} {name}: dense recall@5 {out[corpus][name]['dense']['recall@5']:.3f}, "
                f"ingest {ingest_s:.1f} s")
    return out, texts


def throughput(texts: dict[str, list[str]], rounds: int) -> dict[str, Any]:
    embedders: dict[str, TextEmbedder] = {
        name: load_embedder(EmbeddingConfig(backend=backend, precision=precision))  # type: ignore[arg-type]
        for name, backend, precision in BACKENDS}
    out: dict[str, Any] = {}
    for corpus, items in texts.items():
        per: dict[str, list[float]] = {name: [] for name in embedders}
        for emb in embedders.values():
            emb.encode(items[:8])  # warm up (first-call allocations, lazy inits)
        for rnd in range(rounds):
            order = list(embedders) if rnd % 2 == 0 else list(reversed(embedders))
            for name in order:
                t0 = time.perf_counter()
                embedders[name].encode(items)
                per[name].append(len(items) / (time.perf_counter() - t0))
        med = {name: statistics.median(v) for name, v in per.items()}
        out[corpus] = {
            "chunks": len(items),
            "chunks_per_s": {n: round(v, 2) for n, v in med.items()},
            "rounds_chunks_per_s": {n: [round(x, 2) for x in v] for n, v in per.items()},
            "ratio_vs_torch_fp32": {n: round(v / med["torch fp32"], 3) for n, v in med.items()},
            "ratio_vs_torch_auto": {n: round(v / med["torch auto"], 3) for n, v in med.items()},
        }
        say(f"{corpus} chunks/s: " + ", ".join(f"{n} {v:.1f}" for n, v in med.items()))
    return out


def export_cost(work: Path) -> dict[str, float]:
    """Seconds to export and to quantize once, in an empty cache folder."""
    from rag.index import onnx_embedder
    from rag.index.embedder import resolve_model_dir

    saved = os.environ.get("RAFTSMITH_CACHE")
    os.environ["RAFTSMITH_CACHE"] = str(work / "fresh-cache")
    try:
        model_dir = resolve_model_dir(EmbeddingConfig())
        t0 = time.perf_counter()
        onnx_embedder.ensure_export(model_dir, "onnx")
        t1 = time.perf_counter()
        onnx_embedder.ensure_export(model_dir, "onnx-int8")
        t2 = time.perf_counter()
    finally:
        if saved is None:
            os.environ.pop("RAFTSMITH_CACHE", None)
        else:
            os.environ["RAFTSMITH_CACHE"] = saved
    return {"export_s": round(t1 - t0, 2), "quantize_int8_s": round(t2 - t1, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "benchmarks" / "apibench-torchhub")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "embedding_backends.json")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if not args.data.is_dir():
        args.data = Path("/work/shared/benchmarks/apibench-torchhub")
    with tempfile.TemporaryDirectory(prefix="raftsmith-embed-bench-") as tmp:
        work = Path(tmp)
        result: dict[str, Any] = {"benchmark": "embedding backends, apibench-torchhub + kestrel",
                                  "embedding_model": "all-MiniLM-L6-v2 (packaged)", "cpu_count": os.cpu_count(),
                                  "load_average_at_start": list(os.getloadavg())}
        say("export and quantization cost")
        result["export"] = export_cost(work)
        say("ingest + dense recall per backend")
        result["recall"], texts = recall_and_texts(args.data, work)
        say(f"throughput, {args.rounds} alternating rounds")
        result["throughput"] = throughput(texts, args.rounds)
        base = result["recall"]["apibench"]["torch auto"]["dense"]["recall@5"]
        result["apibench_recall5_delta_vs_torch_auto"] = {
            n: round(row["dense"]["recall@5"] - base, 4) for n, row in result["recall"]["apibench"].items()}
        result["load_average_at_end"] = list(os.getloadavg())
        result["peak_rss_mb"] = round(rss_mb(), 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"throughput": {c: r["ratio_vs_torch_auto"] for c, r in result["throughput"].items()},
                      "recall5_delta": result["apibench_recall5_delta_vs_torch_auto"]}, indent=1))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
