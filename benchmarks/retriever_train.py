"""train-retriever on APIBench TorchHub: base vs tuned embedder, document recall@1/5/10.

    nice -n 10 .venv/bin/python benchmarks/retriever_train.py [--data DIR] [--out FILE] [--work DIR]
        [--epochs N] [--batch-size N] [--hard-negatives N] [--max-seq-length N] [--lr X]

The 94 API records become documents exactly as in benchmarks/retrieval.py (its render()), and
its TRAINING questions (torchhub_train.json) become a domain_questions YAML: one item per API,
question -> reference answer = the API call, the other training questions of that API as its
paraphrases. ``generate --teacher none`` turns them into RAFT rows offline (the oracle is the
chunk holding the API call), then ``train-retriever`` tunes MiniLM on them. Both embedders
are evaluated side by side on the EVAL questions (torchhub_eval.json; never trained on),
dense and hybrid, as retrieval.py ranks documents: by the first of their chunks among the
top 50. ``--work DIR`` keeps the prepared workspace (ingest + generate) for the next run.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from apibench import question_of, read_lines, render, say, train_question  # noqa: E402

from rag.config import Workspace, init_workspace, load_workspace  # noqa: E402

MODES = ("dense", "bm25", "hybrid")


def prepare(data: Path, root: Path) -> tuple[Workspace, dict[str, str], dict[str, Any]]:
    """Documents, the question file, ingest and generate; reused when ``root`` is already prepared."""
    from builder.generate.engine import run_generate
    from rag.ingest.pipeline import ingest

    recs = read_lines(data / "torchhub_api.jsonl")
    doc_of_call: dict[str, str] = {}
    names: list[str] = []
    for i, rec in enumerate(recs):
        name = f"{i:03d}-{re.sub(r'[^A-Za-z0-9_.-]', '_', rec['api_name'])[:40]}.md"
        names.append(name)
        doc_of_call[rec["api_call"]] = f"docs/{name}"
    done = root / "prepared.json"
    if done.is_file():
        return load_workspace(root / "raftsmith.yaml"), doc_of_call, json.loads(done.read_text())
    shutil.rmtree(root, ignore_errors=True)
    ws = init_workspace(root, corpus_name="apibench")
    for rec, name in zip(recs, names, strict=True):
        (ws.root / "docs" / name).write_text(render(rec), encoding="utf-8")
    by_call: dict[str, list[str]] = {}
    for row in read_lines(data / "torchhub_train.json"):
        q = train_question(row["code"])
        if q and q not in by_call.setdefault(row["api_call"], []):
            by_call[row["api_call"]].append(q)
    items = [{"id": f"api-{i:03d}", "question": qs[0], "answer": call, **({"paraphrases": qs[1:]} if qs[1:] else {})}
             for i, (call, qs) in enumerate(sorted(by_call.items()))]
    qfile = ws.root / "domain_questions" / "apibench.yaml"
    qfile.write_text(yaml.safe_dump({"name": "apibench-torchhub-train",
                                     "questions": [{"category": "TorchHub", "items": items}]}, sort_keys=False))
    cfg = yaml.safe_load(ws.config_path.read_text()) if ws.config_path else {}
    cfg["raft"].update({"questions": ["domain_questions/apibench.yaml"], "closed_book": 0.0, "paraphrases": 0})
    cfg["teacher"]["provider"] = "none"
    (ws.root / "raftsmith.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    ws = load_workspace(ws.root / "raftsmith.yaml")
    t0 = time.perf_counter()
    rep = ingest(ws)
    ingest_s = time.perf_counter() - t0
    say(f"ingested {rep.total_chunks} chunks in {ingest_s:.0f} s; generating RAFT rows (teacher none)")
    t0 = time.perf_counter()
    gen = run_generate(ws, teacher="none")
    info = {"documents": len(recs), "chunks": rep.total_chunks, "ingest_s": round(ingest_s, 1),
            "train_questions": sum(len(v) for v in by_call.values()), "apis_with_train_questions": len(by_call),
            "generate": {"train_rows": gen.train_rows, "eval_rows": gen.eval_rows, "dropped": gen.dropped,
                         "seconds": round(time.perf_counter() - t0, 1)}}
    done.write_text(json.dumps(info, indent=2))
    return ws, doc_of_call, info


def doc_recall(ws: Workspace, questions: list[str], gold: list[str]) -> dict[str, dict[str, float]]:
    """Document recall@1/5/10 and MRR over the top 50 chunks, as benchmarks/retrieval.py ranks them."""
    from builder.retriever.evaluate import recall_at_k
    from builder.retriever.pairs import Query
    from rag.retrieve import Retriever

    queries = [Query(f"eval-{i}", q, [], [want]) for i, (q, want) in enumerate(zip(questions, gold, strict=True))]
    with Retriever.from_workspace(ws) as r:
        return recall_at_k(r, queries, MODES, unit="source", depth=50)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "benchmarks" / "apibench-torchhub")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "retriever_train.json")
    ap.add_argument("--work", type=Path, default=None, help="Keep the prepared workspace here (default: a temp dir).")
    ap.add_argument("--epochs", type=float, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--hard-negatives", type=int, default=None)
    ap.add_argument("--max-seq-length", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    args = ap.parse_args()
    from builder.retriever.run import run_train_retriever
    from builder.retriever.switch import set_embedding_model

    t_all = time.perf_counter()
    tmp = None if args.work else tempfile.TemporaryDirectory(prefix="retriever-train-")
    root = (args.work or Path(tmp.name if tmp else ".")) / "apibench"
    ws, doc_of_call, info = prepare(args.data, root)
    if ws.config.embedding.model != "default":  # a kept workspace from an earlier run: start from the base again
        shutil.rmtree(ws.path(ws.config.embedding.model), ignore_errors=True)
        set_embedding_model(ws, "default")
        from rag.ingest.pipeline import ingest

        ingest(load_workspace(ws.config_path))
        ws = load_workspace(ws.config_path)
    evals = read_lines(args.data / "torchhub_eval.json")
    questions = [question_of(e["code"]) for e in evals]
    gold = [doc_of_call[e["api_call"]] for e in evals]
    say(f"{len(questions)} eval questions; base embedder recall")
    base = doc_recall(ws, questions, gold)
    say(f"base: {json.dumps(base)}")
    res = run_train_retriever(ws, epochs=args.epochs, batch_size=args.batch_size, hard_negatives=args.hard_negatives,
                              max_seq_length=args.max_seq_length, lr=args.lr, force=True)
    say(f"trained on {res.pairs} pairs in {res.train_seconds:.0f} s; re-embedded in {res.reembed_seconds:.0f} s")
    ws = load_workspace(ws.config_path)
    tuned = doc_recall(ws, questions, gold)
    say(f"tuned: {json.dumps(tuned)}")
    out = {
        "benchmark": "APIBench TorchHub: train-retriever on the training questions, eval questions held out",
        **info,
        "eval_questions": len(questions),
        "pairs": res.pairs,
        "train_seconds": res.train_seconds,
        "reembed_seconds": res.reembed_seconds,
        "device": res.device,
        "hyperparameters": res.hyperparameters,
        "document_recall": {"base": base, "tuned": tuned},
        "train_retriever_own_eval_split": {"questions": res.eval_questions, "base": res.base, "tuned": res.tuned},
        "wall_seconds": round(time.perf_counter() - t_all, 1),
        "target": "tuned recall@5 >= 0.80",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
