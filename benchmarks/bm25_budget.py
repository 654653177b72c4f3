"""What leaving out a query's commonest terms (chat.bm25_budget) costs on real text.

    .venv/bin/python benchmarks/bm25_budget.py [--corpora apibench,kestrel,manpages]

On an index of over 100k chunks a BM25 query keeps only its rarest terms whose chunk counts add
up to the budget (benchmarks/index_scale.py --stream measures the speed at 1M and 10M on
synthetic text, where relevance cannot be judged). The corpora here are small, so the budget is
forced on at a few fractions of each corpus's chunk count (the default, 10k postings, is 1 % of
a 1M-chunk index and 0.1 % of a 10M one) and recall@5 of BM25 and hybrid is compared with every
term kept, on the same index in one run. Writes benchmarks/results/bm25_budget.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import numpy as np  # noqa: E402
from retrieval import (  # noqa: E402
    answer_ranks,
    apibench_workspace,
    doc_ranks,
    kestrel_workspace,
    manpages_workspace,
    say,
    summarize,
)

import rag.index.store as store_mod  # noqa: E402
from rag.index.store import query_terms  # noqa: E402
from rag.ingest.pipeline import ingest  # noqa: E402
from rag.retrieve import Retriever  # noqa: E402

FRACTIONS = (0.001, 0.01, 0.05, 0.2)


def corpus_rows(name: str, made: Any) -> dict[str, Any]:
    ws, questions, gold = made
    report = ingest(ws)
    n = report.total_chunks
    row: dict[str, Any] = {"documents": report.total_documents, "chunks": n, "questions": len(questions),
                           "query_terms_mean": round(float(np.mean([len(query_terms(q)) for q in questions])), 2)}
    ranks = answer_ranks if name == "kestrel" else doc_ranks
    saved = store_mod.BM25_BUDGET_FROM
    with Retriever.from_workspace(ws) as r:
        r.embed(["warm up"])
        for label, budget in [("all terms", 0), *[(f"{f:.1%} of chunks", max(1, round(f * n))) for f in FRACTIONS]]:
            store_mod.BM25_BUDGET_FROM = 0 if budget else saved  # forced on, whatever the corpus size
            r.bm25_budget = budget
            cell: dict[str, Any] = {"budget": budget}
            for mode in ("bm25", "hybrid"):
                res = r.search_many(questions, k=10, mode=mode)
                cell[mode] = summarize(ranks(res, gold), (1, 5, 10))
            if budget:
                plans = [r.store.bm25_plan(query_terms(q), budget) for q in questions]
                cell["terms_kept_mean"] = round(float(np.mean([len(k) for k, _ in plans])), 2)
                cell["conjunctive_share"] = round(float(np.mean([c for _, c in plans])), 3)
            row[label] = cell
            say(f"{name} {label}: bm25 R@5 {cell['bm25']['recall@5']:.3f}, hybrid R@5 {cell['hybrid']['recall@5']:.3f}")
    store_mod.BM25_BUDGET_FROM = saved
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "benchmarks" / "apibench-torchhub")
    ap.add_argument("--corpora", default="apibench,kestrel,manpages")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "bm25_budget.json")
    args = ap.parse_args()
    result: dict[str, Any] = {"benchmark": "bm25_budget", "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                              "fractions": FRACTIONS, "corpora": {}}
    makers = {"apibench": lambda root: apibench_workspace(args.data, root), "kestrel": kestrel_workspace,
              "manpages": manpages_workspace}
    with tempfile.TemporaryDirectory(prefix="raftsmith-bm25-budget-") as tmp:
        for name in args.corpora.split(","):
            made = makers[name](Path(tmp) / name)
            if made is None:
                say(f"{name}: not on this machine, skipped")
                continue
            result["corpora"][name] = corpus_rows(name, made)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
