"""Eval wall time: models one after the other vs side by side, on a finished demo run.

``run_eval(parallel=...)`` can ask base and tuned at the same time, each llama.cpp model on
its share of the cores. This script runs the demo's own eval (held-out paraphrases, with and
without RAG, plus the forgetting probe unless --no-probe) both ways on the laptop workspace
of a demo output folder, alternating the order over --repeats rounds so load drift hits both,
and checks that the answers are the same.

    python benchmarks/eval_parallel.py --from DEMO_OUT [--repeats 1] [--no-probe]

DEMO_OUT is what ``raftsmith demo --out DIR`` (or the e2e test) left. Writes
benchmarks/results/eval_parallel.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "benchmarks" / "results" / "eval_parallel.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from", dest="src", type=Path, required=True, help="a demo output folder (has laptop/)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--no-probe", action="store_true", help="leave the forgetting probe out")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()

    from rag.config import load_workspace
    from rag.evaluate import run_eval

    laptop = args.src / "laptop"
    if not (laptop / "raftsmith.yaml").is_file():
        sys.exit(f"{laptop}/raftsmith.yaml not found: give --from the folder a demo run wrote.")
    ws = load_workspace(laptop / "raftsmith.yaml")
    heldout = sorted((laptop / "domain_questions").glob("*-heldout.yaml"))
    if not heldout:
        sys.exit(f"No *-heldout.yaml in {laptop / 'domain_questions'}.")
    seconds: dict[str, list[float]] = {"sequential": [], "side_by_side": []}
    answers: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(args.repeats):
            order = ["sequential", "side_by_side"] if rnd % 2 == 0 else ["side_by_side", "sequential"]
            for name in order:
                t = time.perf_counter()
                rep = run_eval(ws, models=["base", "tuned"], rag_modes=[True, False], questions=heldout,
                               out_dir=Path(tmp) / f"{name}-{rnd}", forgetting=not args.no_probe,
                               parallel=name == "side_by_side")
                seconds[name].append(round(time.perf_counter() - t, 2))
                answers[name] = [r["answer"] for r in rep.rows]
                print(f"round {rnd + 1} {name}: {seconds[name][-1]} s", flush=True)
    med = {k: statistics.median(v) for k, v in seconds.items()}
    result = {
        "benchmark": "eval_parallel",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "load_avg_before": list(os.getloadavg())},
        "questions": len(answers["sequential"]),
        "probe": not args.no_probe,
        "seconds": seconds,
        "median_s": med,
        "side_by_side_over_sequential": round(med["side_by_side"] / med["sequential"], 3),
        "same_answers": answers["sequential"] == answers["side_by_side"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: result[k] for k in ("median_s", "side_by_side_over_sequential", "same_answers")}))


if __name__ == "__main__":
    main()
