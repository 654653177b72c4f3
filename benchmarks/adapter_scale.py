"""Adapter-scale benchmark: closed-book knowledge and forgetting at LoRA strengths below 1.0.

    .venv/bin/python benchmarks/knowledge.py --keep /tmp/ferrow-ws        # train + export once
    .venv/bin/python benchmarks/adapter_scale.py --workspace /tmp/ferrow-ws \\
        --questions domain_questions/ferrow-heldout.yaml [--scales 1.0,0.75,0.5] [--rag]

``student.adapter_scale: s`` bakes ``s`` into the adapter's B matrices, which makes the
model ``W + s * B @ A`` (tests/unit/builder/train/test_adapter_scale.py checks that the
saved, reloaded and merged adapter is exactly that). llama.cpp applies a LoRA GGUF at a
runtime scale with the same arithmetic, so one trained adapter is measured at every scale
here without retraining: the base GGUF plus the export's adapter GGUF at ``lora_scale=s``,
asked the held-out phrasings closed book (and with RAG with ``--rag``) and the forgetting
probe, all in one run beside the base model. Headline: closed-book "correct" on the held-out
phrasings and retention of the base model's right probe answers. Writes
benchmarks/results/adapter_scale-<corpus>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workspace", type=Path, required=True, help="A workspace with a finished export.")
    ap.add_argument("--questions", required=True, help="Held-out question file, relative to the workspace.")
    ap.add_argument("--scales", default="1.0,0.75,0.5")
    ap.add_argument("--rag", action="store_true", help="Also ask with retrieval.")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import llama_cpp

    import rag.llm.llama_cpp_backend as lcb
    from rag.config import load_workspace
    from rag.evaluate.run import run_eval

    ws = load_workspace(args.workspace / "raftsmith.yaml")
    scale = {"s": 1.0}
    plain = llama_cpp.Llama

    class ScaledAdapter(plain):  # type: ignore[misc, valid-type]
        def __init__(self, *a: Any, **kw: Any) -> None:
            if kw.get("lora_path"):
                kw["lora_scale"] = scale["s"]
            super().__init__(*a, **kw)

    llama_cpp.Llama = ScaledAdapter  # type: ignore[misc]  # load_llama imports it by name at call time
    modes = (False, True) if args.rag else (False,)

    def measure(model: str, tag: str) -> tuple[dict[str, Any], set[str]]:
        lcb._CACHE.clear()
        t = time.monotonic()
        rep = run_eval(ws, models=(model,), rag_modes=modes, questions=[args.questions], forgetting=True,
                       parallel=False, out_dir=ws.state_dir / "bench-adapter-scale" / tag)
        assert rep.probe is not None
        right = {r["id"] for r in rep.probe["rows"] if r[f"{model}_right"]}
        cells = {("rag" if s["rag"] else "closed_book"): {k: s.get(k) for k in ("correct", "exact", "contains", "f1")}
                 for s in rep.summary if s["model"] == model}
        return {"cells": cells, "general_right": len(right), "probe_n": rep.probe["n"],
                "seconds": round(time.monotonic() - t, 1)}, right

    name = ws.config.corpus.name
    out = args.out or REPO / "benchmarks" / "results" / f"adapter_scale-{name}.json"
    base, base_right = measure("base", "base")
    print("base", json.dumps(base), flush=True)
    rows: list[dict[str, Any]] = []
    for s in (float(x) for x in args.scales.split(",")):
        scale["s"] = s
        row, right = measure("tuned-adapter", f"scale-{s}")
        row = {"scale": s, **row, "retention": round(len(right & base_right) / len(base_right), 4) if base_right else None}
        rows.append(row)
        print(s, json.dumps(row), flush=True)
        _write(out, args, name, base, rows)  # after every scale: a stopped run keeps what it measured
    print(json.dumps(_write(out, args, name, base, rows)["headline"], indent=2))
    print(f"wrote {out}")


def _write(out: Path, args: argparse.Namespace, name: str, base: dict[str, Any],
           rows: list[dict[str, Any]]) -> dict[str, Any]:
    result = {
        "benchmark": "adapter_scale", "corpus": name, "questions": args.questions,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "load_avg": os.getloadavg()},
        "how": "base GGUF + the export's LoRA GGUF at llama.cpp lora_scale=s, one trained adapter, one run",
        "base": base, "scales": rows,
        "headline": {str(r["scale"]): {"closed_book_correct": r["cells"]["closed_book"]["correct"],
                                       "rag_correct": (r["cells"].get("rag") or {}).get("correct"),
                                       "retention": r["retention"]} for r in rows},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
