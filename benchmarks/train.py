"""Training throughput: CPU tokens/s and peak RSS on SmolLM2-135M; on CUDA, unsloth vs hf.

Each measured run happens in its own subprocess (clean peak-memory numbers) through the real
``run_train`` on the same generated rows. Results go to benchmarks/results/train.json.

    python benchmarks/train.py                      # CPU (and CUDA backends when present)
    python benchmarks/train.py --threads 1 --epochs 1
    python benchmarks/train.py --family qwen        # on a GPU box with the model available
    python benchmarks/train.py --data training_data/sample-kestrel.train.jsonl --rows 24 \
        --variants stock,gathered,top15                 # the CPU speed-ups, side by side

Variants: ``gathered`` is the default trainer (the output layer runs on answer positions
only, builder/train/loss.py); ``stock`` forces transformers' full-logits loss for comparison;
``topN`` adds ``student.lora.top_layers = N``; ``topN-nocache`` also turns off the frozen-layer
cache (``student.reuse_frozen_layers``, builder/train/frozen_cache.py), for comparison: the
cache pays off from the second epoch, so compare them with ``--epochs 3``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "train.json"


def make_rows(n: int, seed: int = 0) -> list[dict]:
    """Invented facts in the closed-book training-row shape (deterministic)."""
    rng = random.Random(seed)
    syll = ["zor", "blax", "vel", "mora", "quen", "fir", "tar", "vik", "mor", "ves", "pel", "lu", "cid"]
    rows = []
    for i in range(n):
        name = "".join(rng.choice(syll) for _ in range(3)).capitalize()
        port = rng.randint(1024, 65000)
        q = f"What is the default port of the {name} gateway?"
        a = f"The {name} gateway listens on port {port} by default.\n<ANSWER>: {port}"
        rows.append({"messages": [{"role": "system", "content": "Answer briefly."},
                                  {"role": "user", "content": q}, {"role": "assistant", "content": a}],
                     "meta": {"id": f"bench-{i}", "split": "train"}})
    return rows


def child(args: argparse.Namespace) -> None:
    import resource

    from builder.train.run import run_train
    from rag.config import init_workspace

    with tempfile.TemporaryDirectory(prefix="raftsmith-bench-") as tmp:
        ws = init_workspace(Path(tmp) / "ws", corpus_name="bench")
        ws.config.student.family = args.family
        ws.config.student.batch_size = args.batch_size
        ws.config.student.base = args.base
        ws.config.student.quantization = args.quantization
        train = ws.training_dir / "bench.train.jsonl"
        if args.data:
            lines = [ln for ln in Path(args.data).read_text(encoding="utf-8").splitlines() if ln.strip()]
            train.write_text("".join(ln + "\n" for ln in lines[: args.rows]))
        else:
            train.write_text("".join(json.dumps(r) + "\n" for r in make_rows(args.rows)))
        if args.variant == "stock":
            import builder.train.loss as loss_mod

            loss_mod.supports_gathered_loss = lambda model: False  # the reference path, for comparison
        elif args.variant.startswith("top"):
            ws.config.student.lora.top_layers = int(args.variant[3:].removesuffix("-nocache"))
        if args.variant.endswith("-nocache"):
            ws.config.student.reuse_frozen_layers = False
        peak_vram = None
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
        except ImportError:
            torch = None  # type: ignore[assignment]
        t0 = time.time()
        res = run_train(ws, epochs=args.epochs, backend=args.backend, train_file=train, eval_file=args.eval_data)
        wall = time.time() - t0
        if torch is not None and torch.cuda.is_available():
            peak_vram = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        report = json.loads(res.report_path.read_text())
        print(json.dumps({
            "backend": res.backend, "family": res.family, "variant": args.variant,
            "device": "cuda" if peak_vram is not None else "cpu",
            "threads": int(os.environ.get("RAFTSMITH_THREADS", "0") or 0) or None,
            "rows": res.train_rows, "epochs": args.epochs, "batch_size": args.batch_size,
            "tokens_per_epoch": report["tokens_per_epoch"], "train_runtime_s": report["train_runtime_s"],
            "wall_s_incl_load": round(wall, 1), "tokens_per_s": res.tokens_per_s,
            "torch_threads": torch.get_num_threads() if torch is not None else None,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "peak_vram_mb": peak_vram, "final_loss": res.final_loss,
            "frozen_layer_cache": report.get("frozen_layer_cache"),
            "quantization": json.loads((res.run_dir / "run.json").read_text()).get("quantization"),
            "knowledge": res.knowledge,
        }))


def backends_to_run() -> list[str]:
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    if not cuda:
        return ["hf"]
    runs = ["hf"]
    try:
        import unsloth  # noqa: F401

        runs.insert(0, "unsloth")
    except Exception:  # noqa: BLE001
        pass
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", default="smollm2")
    ap.add_argument("--rows", type=int, default=40)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--threads", default="0",
                    help="torch CPU threads (RAFTSMITH_THREADS), comma list to compare, e.g. 1,2; 0 = torch default")
    ap.add_argument("--backend", default=None, help="one backend only (hf|unsloth); default: all available")
    ap.add_argument("--data", default=None, help="JSONL training rows to use (default: synthetic closed-book rows)")
    ap.add_argument("--eval-data", default=None, help="JSONL eval rows (closed-book epoch selection scores them)")
    ap.add_argument("--base", default=None, help="a local HF model folder instead of the family's base")
    ap.add_argument("--quantization", default="auto", help="student.quantization on CUDA: auto, nf4 or none")
    ap.add_argument("--variants", default="gathered", help="comma list: gathered, stock, topN (see above)")
    ap.add_argument("--variant", default="gathered", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    runs = []
    for threads in [int(t) for t in str(args.threads).split(",")]:
        env = dict(os.environ)
        if threads:
            env["RAFTSMITH_THREADS"] = str(threads)
        for backend in ([args.backend] if args.backend else backends_to_run()):
            for variant in args.variants.split(","):
                cmd = [sys.executable, __file__, "--child", "--family", args.family, "--rows", str(args.rows),
                       "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--backend", backend,
                       "--variant", variant, "--quantization", args.quantization]
                cmd += ["--data", str(Path(args.data).resolve())] if args.data else []
                cmd += ["--eval-data", str(Path(args.eval_data).resolve())] if args.eval_data else []
                cmd += ["--base", str(Path(args.base).resolve())] if args.base else []
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if proc.returncode != 0:
                    runs.append({"backend": backend, "threads": threads, "variant": variant,
                                 "error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]})
                    continue
                runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    by = {r["backend"]: r for r in runs if "tokens_per_s" in r and r.get("variant") == "gathered"}
    var = {r["variant"]: r["tokens_per_s"] for r in runs if "tokens_per_s" in r and r["backend"] == "hf"}
    vs_stock = {v: round(t / var["stock"], 2) for v, t in var.items()} if "stock" in var else None
    speedup = (round(by["unsloth"]["tokens_per_s"] / by["hf"]["tokens_per_s"], 2)
               if "unsloth" in by and "hf" in by and by["hf"]["device"] == "cuda" else None)
    result = {
        "benchmark": "train", "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpu_count": os.cpu_count(), "load_avg": os.getloadavg()},
        "runs": runs, "unsloth_vs_hf_tokens_per_s": speedup, "hf_tokens_per_s_vs_stock": vs_stock,
        "notes": "tokens_per_s = tokens per epoch x epochs / trainer runtime (padding excluded); "
                 "peak_rss_mb includes loading the model; the CPU is shared, see load_avg.",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
