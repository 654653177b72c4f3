"""The demo as a benchmark: wall time per step and the A/B figures, from one `raftsmith demo` run.

    .venv/bin/python benchmarks/demo.py [--out FILE] [--keep DIR]

Runs the README's main job (the offline CPU demo on the sample corpus) through the
installed console script and writes benchmarks/results/demo.json: total and per-step wall
time, the machine's load, and per cell (base/tuned x RAG/closed book) the headline "correct"
beside strict exact, contains, F1, citations, refusals, answers-anyway-when-wrong and the
forgetting probe's retention, plus the training curve (closed-book accuracy per epoch).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "demo.json")
    ap.add_argument("--keep", type=Path, default=None, help="Demo output folder to keep (default: a temp folder).")
    ap.add_argument("--from", dest="from_dir", type=Path, default=None,
                    help="Summarize the demo.json of a finished `raftsmith demo --out DIR` run instead of running one.")
    args = ap.parse_args()
    exe = Path(sys.executable).with_name("raftsmith")
    tmp = Path(tempfile.mkdtemp(prefix="raftsmith-demo-bench-"))
    out_dir = args.keep.resolve() if args.keep else tmp / "demo"
    load_before = os.getloadavg()
    t = time.monotonic()
    try:
        wall: float | None = None
        if args.from_dir:
            out_dir = args.from_dir.resolve()
        else:
            proc = subprocess.run([str(exe), "demo", "--out", str(out_dir), "--json"], capture_output=True, text=True,
                                  env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
            wall = round(time.monotonic() - t, 1)
            if proc.returncode != 0:
                raise SystemExit(f"raftsmith demo failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        demo = json.loads((out_dir / "demo.json").read_text())
        cells = {f"{s['model']} {'rag' if s['rag'] else 'closed-book'}": {
            k: s.get(k) for k in ("correct", "exact", "contains", "f1", "citation_accuracy", "refusal_unanswerable",
                                  "false_refusal", "confident_wrong", "general_right", "retention", "latency_p50_ms")}
            for s in demo["eval"]["summary"]}
        result = {
            "benchmark": "demo",
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "load_avg_before": load_before},
            "wall_s_incl_process_start": wall, "demo_seconds": demo["seconds"], "steps_s": demo["steps"],
            "cells": cells, "forgetting_probe": demo["eval"].get("forgetting_probe"),
            "train": {k: demo["train"].get(k) for k in ("train_rows", "replay_rows", "seconds", "tokens_per_s",
                                                        "hyperparameters", "knowledge")},
            "generate": {k: demo["generate"].get(k) for k in ("train_rows", "eval_rows", "closed_book_rows",
                                                              "refusal_rows", "split")},
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(json.dumps({"demo_seconds": demo["seconds"], "steps_s": demo["steps"], "cells": cells}, indent=2))
        print(f"wrote {args.out}")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
