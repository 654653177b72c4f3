"""llama.cpp thread counts: prompt processing and token generation tokens/s per setting.

raftsmith gives llama.cpp one generation thread per physical core
(rag.llm.llama_cpp_backend.physical_cores) and every logical CPU for prompt batches. This
script measures the alternatives side by side on the packaged SmolLM2 GGUF (or --model):
each setting loads the model once, evaluates a ~400-token prompt and generates --tokens
tokens greedily, --repeats times, alternating settings so load drift hits all of them.

    python benchmarks/threads.py [--model PATH] [--tokens 64] [--repeats 3]

Writes benchmarks/results/threads.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "benchmarks" / "results" / "threads.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="GGUF to run (default: the packaged SmolLM2-135M)")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()

    from llama_cpp import Llama

    from rag.llm.llama_cpp_backend import physical_cores
    from rag.packaged import smollm2_gguf

    model = args.model or smollm2_gguf()
    logical = os.cpu_count() or 1
    physical = physical_cores()
    settings = {"half_logical": max(1, logical // 2), "physical": physical, "logical": logical}
    prompt = (ROOT / "examples" / "kestrel" / "docs" / "networking.md").read_text(encoding="utf-8")[:1600]
    llms = {name: Llama(model_path=str(model), n_ctx=2048, n_threads=n, n_threads_batch=logical, seed=0, verbose=False)
            for name, n in settings.items()}
    tokens = llms["physical"].tokenize(prompt.encode("utf-8"))
    pp: dict[str, list[float]] = {k: [] for k in settings}
    tg: dict[str, list[float]] = {k: [] for k in settings}
    for _ in range(args.repeats):
        for name, llm in llms.items():
            llm.reset()
            t = time.perf_counter()
            llm.eval(tokens)
            pp[name].append(len(tokens) / (time.perf_counter() - t))
            llm.reset()
            t = time.perf_counter()
            out = llm.create_completion(prompt[:300], max_tokens=args.tokens, temperature=0.0)
            n = out["usage"]["completion_tokens"]
            tg[name].append(n / (time.perf_counter() - t))
    result = {
        "benchmark": "threads", "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "cpu_count": logical, "physical_cores": physical,
                    "load_avg": os.getloadavg()},
        "model": Path(model).name, "prompt_tokens": len(tokens), "gen_tokens": args.tokens,
        "settings": {name: {"n_threads": settings[name],
                            "prompt_tokens_per_s_median": round(statistics.median(pp[name]), 1),
                            "gen_tokens_per_s_median": round(statistics.median(tg[name]), 1)}
                     for name in settings},
        "notes": "n_threads_batch = every logical CPU in all settings; the generation time includes "
                 "the short prompt; medians over repeats, settings alternated.",
    }
    base = result["settings"]["half_logical"]["gen_tokens_per_s_median"]
    result["gen_physical_vs_half_logical"] = round(result["settings"]["physical"]["gen_tokens_per_s_median"] / base, 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name, s in result["settings"].items():
        print(f"{name:>12} n_threads={s['n_threads']}: prompt {s['prompt_tokens_per_s_median']} tok/s, "
              f"generation {s['gen_tokens_per_s_median']} tok/s")
    print(f"generation, physical vs half the logical CPUs: {result['gen_physical_vs_half_logical']}x -> {args.out}")


if __name__ == "__main__":
    main()
