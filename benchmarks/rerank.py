"""Rerank benchmark: recall@1/5 and MRR of the first stage alone and reranked, with the cost per query.

    nice -n 10 .venv/bin/python benchmarks/rerank.py [--depth 10] [--apibench-questions 40]
        [--kestrel-questions 0] [--mode hybrid] [--out benchmarks/results/rerank.json]

Corpora: APIBench TorchHub (../shared/benchmarks/apibench-torchhub, rendered and ranked per
document as benchmarks/retrieval.py does: a question is found at the rank of the first chunk
of its API record) and the Kestrel sample (examples/kestrel/docs with
domain_questions/kestrel*.yaml; found = a chunk holds the reference answer, as
``raftsmith eval --retrieval`` counts). For each question the first stage (``--mode``) returns
``--depth`` chunks once; the same candidates are then ranked as they came and as the reranker
orders them, so the two columns differ only by the reranker. No relevance gate is applied.

Rerankers: ``llm`` = the packaged SmolLM2-135M through llama.cpp (the only LLM here), and
``cross-encoder`` = a CrossEncoder with the shape of cross-encoder/ms-marco-MiniLM-L6-v2 (the
packaged all-MiniLM-L6-v2 encoder under an untrained score head). No trained cross-encoder
ships here, so that row measures cost only: its recall says nothing about a real one.
Subsampled questions are a fixed-seed sample; the JSON says how many.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from apibench import question_of, render, say  # noqa: E402

from rag.config import Workspace, init_workspace, load_workspace  # noqa: E402
from rag.evaluate.metrics import contains_words, normalize  # noqa: E402
from rag.ingest.pipeline import ingest  # noqa: E402
from rag.rerank import Reranker, make_reranker, rerank  # noqa: E402
from rag.retrieve import Retriever  # noqa: E402
from rag.types import Chunk  # noqa: E402

Found = Callable[[int, list[Chunk]], int | None]  # (question index, ranked chunks) -> 1-based rank or None


def _sample(n_total: int, n: int) -> list[int]:
    idx = list(range(n_total))
    if 0 < n < n_total:
        idx = sorted(random.Random(0).sample(idx, n))
    return idx


def apibench(data: Path, work: Path, n: int) -> tuple[Workspace, list[str], Found]:
    recs = [json.loads(ln) for ln in (data / "torchhub_api.jsonl").read_text().splitlines() if ln.strip()]
    evals = [json.loads(ln) for ln in (data / "torchhub_eval.json").read_text().splitlines() if ln.strip()]
    ws = init_workspace(work / "apibench", corpus_name="apibench")
    doc_of_call: dict[str, str] = {}
    for i, rec in enumerate(recs):
        name = f"{i:03d}-{re.sub(r'[^A-Za-z0-9_.-]', '_', rec['api_name'])[:40]}.md"
        (ws.root / "docs" / name).write_text(render(rec), encoding="utf-8")
        doc_of_call[rec["api_call"]] = f"docs/{name}"
    ingest(ws)
    picked = [evals[i] for i in _sample(len(evals), n)]
    gold = [doc_of_call[e["api_call"]] for e in picked]

    def found(i: int, chunks: list[Chunk]) -> int | None:
        docs: list[str] = []
        for c in chunks:
            if c.source not in docs:
                docs.append(c.source)
        return docs.index(gold[i]) + 1 if gold[i] in docs else None

    return ws, [question_of(e["code"]) for e in picked], found


def kestrel(work: Path, n: int) -> tuple[Workspace, list[str], Found]:
    import shutil

    from rag.evaluate.questions import load_items

    ws = init_workspace(work / "kestrel", corpus_name="kestrel")
    shutil.rmtree(ws.root / "docs")
    shutil.copytree(REPO / "examples" / "kestrel" / "docs", ws.root / "docs")
    ingest(ws)
    files = sorted((REPO / "domain_questions").glob("kestrel*.yaml"))
    items = [it for it in load_items(ws, files) if it.answer and not it.unanswerable]
    items = [items[i] for i in _sample(len(items), n)]
    refs = [normalize(it.answer or "") for it in items]

    def found(i: int, chunks: list[Chunk]) -> int | None:
        return next((r for r, c in enumerate(chunks, start=1) if contains_words(normalize(c.text), refs[i])), None)

    return ws, [it.question for it in items], found


def _metrics(ranks: Sequence[int | None]) -> dict[str, float]:
    n = len(ranks)
    return {"recall@1": round(sum(1 for r in ranks if r == 1) / n, 4),
            "recall@5": round(sum(1 for r in ranks if r is not None and r <= 5) / n, 4),
            "mrr": round(sum(1.0 / r for r in ranks if r) / n, 4)}


def measure(ws: Workspace, questions: list[str], found: Found, rerankers: dict[str, Reranker], mode: str,
            depth: int) -> dict[str, Any]:
    with Retriever.from_workspace(ws) as r:
        r.embed(["warm up"])
        first: list[list[Chunk]] = []
        t_first: list[float] = []
        for q in questions:
            t0 = time.perf_counter()
            first.append(r.search(q, k=depth, mode=mode, dense_scores=True))
            t_first.append((time.perf_counter() - t0) * 1000)
    out: dict[str, Any] = {
        "questions": len(questions), "mode": mode, "depth": depth,
        "first_stage": {**_metrics([found(i, c) for i, c in enumerate(first)]),
                        "ms_per_query_p50": round(statistics.median(t_first), 1)},
        "found_in_candidates": round(sum(1 for i, c in enumerate(first) if found(i, c)) / len(questions), 4),
    }
    for name, reranker in rerankers.items():
        say(f"  {name}: {len(questions)} questions x {depth} candidates")
        rerank(reranker, questions[0], first[0][:2], k=2)  # warm-up (model load, first evaluation)
        ranks: list[int | None] = []
        times: list[float] = []
        passages = 0
        for i, q in enumerate(questions):
            t0 = time.perf_counter()
            ranked = rerank(reranker, q, first[i], k=len(first[i]) or 1)
            times.append((time.perf_counter() - t0) * 1000)
            passages += len(first[i])
            ranks.append(found(i, ranked))
            if (i + 1) % 5 == 0:
                say(f"    {i + 1}/{len(questions)}, {statistics.median(times):.0f} ms per query so far")
        out[name] = {**_metrics(ranks), "model": reranker.model_label,
                     "ms_per_query_p50": round(statistics.median(times), 1),
                     "ms_per_passage": round(sum(times) / max(1, passages), 1)}
    return out


def cost_only_cross_encoder(work: Path) -> Reranker:
    """ms-marco-MiniLM-L6-v2's shape: the packaged MiniLM encoder under an untrained 1-label head."""
    from sentence_transformers import CrossEncoder

    from rag.packaged import minilm_dir
    from rag.rerank.cross_encoder import load_cross_encoder

    folder = work / "ce-minilm-untrained"
    CrossEncoder(str(minilm_dir()), num_labels=1, device="cpu").save_pretrained(str(folder))
    return load_cross_encoder(str(folder))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "benchmarks" / "apibench-torchhub")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "rerank.json")
    ap.add_argument("--depth", type=int, default=10, help="First-stage candidates the reranker reads per question.")
    ap.add_argument("--mode", default="hybrid", choices=("dense", "bm25", "hybrid"))
    ap.add_argument("--apibench-questions", type=int, default=40, help="Sampled eval questions (0 = all 185).")
    ap.add_argument("--kestrel-questions", type=int, default=0, help="Sampled Kestrel questions (0 = all).")
    args = ap.parse_args()
    t_start = time.perf_counter()
    result: dict[str, Any] = {"benchmark": "rerank", "embedding_model": "all-MiniLM-L6-v2 (packaged)",
                              "llm": "SmolLM2-135M-Instruct Q4_1 (packaged), llama.cpp, Yes/No logprobs"}
    with tempfile.TemporaryDirectory(prefix="raftsmith-rerank-") as tmp:
        work = Path(tmp)
        corpora = {"apibench-torchhub": lambda: apibench(args.data, work, args.apibench_questions),
                   "kestrel": lambda: kestrel(work, args.kestrel_questions)}
        ce: Reranker | None = None
        for name, build in corpora.items():
            say(f"{name}: ingest")
            ws, questions, found = build()
            ws = load_workspace(ws.config_path)
            llm = make_reranker(ws, "llm")
            assert llm is not None
            rerankers: dict[str, Reranker] = {"llm": llm}
            if ce is None:
                ce = cost_only_cross_encoder(work)
            rerankers["cross-encoder (untrained, cost only)"] = ce
            say(f"{name}: {len(questions)} questions")
            result[name] = measure(ws, questions, found, rerankers, args.mode, args.depth)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2) + "\n")  # a cut-off run keeps what it measured
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    # the cores are shared: the per-passage cost scales with what else runs (load = runnable processes)
    result["load_average_1_5_15"] = [round(x, 2) for x in os.getloadavg()]
    result["cpus"] = os.cpu_count()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name in ("apibench-torchhub", "kestrel"):
        rep = result[name]
        print(f"{name}: {rep['questions']} questions, {rep['mode']} top {rep['depth']} reranked "
              f"(answer among the candidates: {rep['found_in_candidates']:.2f})")
        print(f"  {'ranking':40} {'R@1':>6} {'R@5':>6} {'MRR':>6} {'ms/query':>9} {'ms/passage':>10}")
        for row in ("first_stage", *[k for k in rep if isinstance(rep[k], dict) and k != "first_stage"]):
            m = rep[row]
            print(f"  {row:40} {m['recall@1']:6.3f} {m['recall@5']:6.3f} {m['mrr']:6.3f} "
                  f"{m['ms_per_query_p50']:9.1f} {m.get('ms_per_passage', 0.0):10.1f}")
    print(f"wall {result['wall_s']} s; written to {args.out}")


if __name__ == "__main__":
    main()
