"""Knowledge benchmark: does the tuned model know a domain closed book, in words it never saw?

    .venv/bin/python benchmarks/knowledge.py [--domain benchmarks/domains/ferrow] [--out FILE]
                                             [--set raft.rag_rows=first_phrasing ...]

The user's path, command by command, on an invented domain that the developers do not tune
on (benchmarks/domains/ferrow: four documents, one question item per fact with three
paraphrases, two held-out phrasings per fact in a ``holdout: true`` file):

    raftsmith init / ingest
    raftsmith generate --teacher none        (the default recipe: RAFT + closed-book rows)
    raftsmith train --family smollm2
    raftsmith export
    raftsmith eval --models base,tuned --both --questions heldout.yaml --forgetting

Each is run as a subprocess of the installed ``raftsmith`` console script. The headline is
"correct" (the reference's content in the answer, whole tokens) on the held-out phrasings,
closed book and with RAG, base beside tuned, and the forgetting probe's retention; strict
exact match and the per-epoch closed-book curve of training are kept as columns. Writes
benchmarks/results/knowledge-<domain>.json.
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
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]


def _raftsmith() -> str:
    exe = Path(sys.executable).with_name("raftsmith")
    if not exe.exists():
        raise SystemExit(f"{exe} not found: install raftsmith into this interpreter first (bash .ci/bootstrap install)")
    return str(exe)


def run(args: list[str], cwd: Path) -> tuple[str, float]:
    t = time.monotonic()
    proc = subprocess.run([_raftsmith(), *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"raftsmith {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout, round(time.monotonic() - t, 1)


def last_json(text: str) -> Any:
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    start = text.find("{")
    return json.loads(text[start:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--domain", type=Path, default=REPO / "benchmarks" / "domains" / "ferrow")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="SECTION.KEY=VALUE (YAML value) written into raftsmith.yaml before generate, e.g. "
                         "raft.rag_rows=first_phrasing")
    ap.add_argument("--keep", type=Path, default=None, help="Keep the workspace here instead of a temp folder.")
    args = ap.parse_args()
    domain = args.domain.resolve()
    name = domain.name
    out = args.out or REPO / "benchmarks" / "results" / f"knowledge-{name}.json"
    tmp = Path(tempfile.mkdtemp(prefix=f"raftsmith-knowledge-{name}-"))
    ws = args.keep.resolve() if args.keep else tmp / "ws"
    if ws.exists():
        shutil.rmtree(ws)
    steps: dict[str, float] = {}
    try:
        _, steps["init"] = run(["init", str(ws), "--name", name], cwd=tmp)
        shutil.rmtree(ws / "docs")
        shutil.copytree(domain / "docs", ws / "docs")
        for f in ws.joinpath("domain_questions").glob("*"):
            f.unlink()
        shutil.copy(domain / "questions.yaml", ws / "domain_questions" / f"{name}.yaml")
        shutil.copy(domain / "heldout.yaml", ws / "domain_questions" / f"{name}-heldout.yaml")
        cfg_path = ws / "raftsmith.yaml"
        cfg = yaml.safe_load(cfg_path.read_text())
        for o in args.overrides:
            key, _, value = o.partition("=")
            section, _, k = key.partition(".")
            node = cfg.setdefault(section, {})
            *parents, leaf = k.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = yaml.safe_load(value)
        cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        _, steps["ingest"] = run(["ingest"], cwd=ws)
        gen_out, steps["generate"] = run(["generate", "--teacher", "none", "--json"], cwd=ws)
        train_out, steps["train"] = run(["train", "--family", "smollm2", "--json"], cwd=ws)
        _, steps["export"] = run(["export"], cwd=ws)
        eval_dir = ws / ".raftsmith" / "bench-eval"
        eval_out, steps["eval"] = run(["eval", "--models", "base,tuned", "--both", "--forgetting", "--json",
                                       "--questions", f"domain_questions/{name}-heldout.yaml", "--out", str(eval_dir)], cwd=ws)
        gen, trained, ev = last_json(gen_out), last_json(train_out), last_json(eval_out)
        cells = {f"{s['model']} {'rag' if s['rag'] else 'closed-book'}": {
            k: s.get(k) for k in ("correct", "exact", "contains", "f1", "citation_accuracy", "confident_wrong",
                                  "general_right", "retention", "latency_p50_ms")} for s in ev["summary"]}
        facts = yaml.safe_load((domain / "questions.yaml").read_text())
        n_facts = sum(len(g["items"]) for g in facts["questions"])
        result = {
            "benchmark": "knowledge", "domain": name, "facts": n_facts,
            "heldout_phrasings": sum(1 for s in ev["summary"][:1] for _ in range(s["answerable"])),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "load_avg": os.getloadavg()},
            "overrides": args.overrides,
            "headline": {
                "closed_book_correct": {"tuned": cells["tuned closed-book"]["correct"], "base": cells["base closed-book"]["correct"]},
                "rag_correct": {"tuned": cells["tuned rag"]["correct"], "base": cells["base rag"]["correct"]},
                "retention": cells["tuned closed-book"]["retention"],
            },
            "cells": cells,
            "forgetting_probe": ev.get("forgetting_probe"),
            "generate": {k: gen.get(k) for k in ("train_rows", "eval_rows", "closed_book_rows", "refusal_rows", "dropped", "split")},
            "train": {k: trained.get(k) for k in ("train_rows", "seconds", "tokens_per_s", "final_loss", "hyperparameters", "knowledge")},
            "steps_s": steps,
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(json.dumps(result["headline"], indent=2))
        print(f"steps (s): {steps}")
        print(f"wrote {out}")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
