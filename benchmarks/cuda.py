"""The CUDA paths, checked and timed on a GPU machine beside that machine's own CPU.

    python benchmarks/cuda.py embed --minilm DIR --data DIR [--out FILE]
    python benchmarks/cuda.py train --arch DIR [--out FILE]

``embed``: MiniLM (``--minilm``: a sentence-transformers folder) on the APIBench TorchHub
documents (``--data``), chunked and given their context as ``raftsmith ingest`` does. The same
chunks are embedded on the CPU in fp32, on CUDA in fp32 and fp16, with fixed row batches and
with token-budget batches (``embedding.batch_tokens``): chunks/s side by side in one run, the
cosine of each CUDA vector to the CPU one, and dense document recall@1/5/10 on the eval
questions (exact search over the chunk vectors, documents ranked by their first chunk among
the top 50, as benchmarks/retrieval.py does). Then ``train-retriever``'s trainer on CUDA, on
(training question, the chunk holding its API call) pairs with one hard negative each, and
the tuned embedder's recall.

``train``: ``raftsmith train``'s ``run_train`` on the sample Kestrel rows (train + eval, so the
closed-book epoch selection runs), on CUDA with 4-bit QLoRA (bitsandbytes) and with LoRA over
bf16 weights, then on the same machine's CPU; tokens/s side by side, peak GPU memory, and
``raftsmith export``'s merge of the CUDA-trained adapter. ``--arch`` holds a model's config and
tokenizer and no weights: the model is built with random weights (its architecture, so its
speed, is the real one; its answers are not), since a checkpoint does not fit the transfer to
the GPU machine. Results go to benchmarks/results/cuda-<part>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from apibench import question_of, read_lines, render, say, train_question  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"


def machine() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpu_count": os.cpu_count(), "torch": torch.__version__,
                            "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        info["bf16"] = bool(torch.cuda.is_bf16_supported())
    for pkg in ("transformers", "peft", "sentence_transformers", "bitsandbytes", "unsloth", "datasets"):
        try:
            from importlib.metadata import version

            info[pkg] = version(pkg.replace("_", "-"))
        except Exception:  # noqa: BLE001
            info[pkg] = None
    return info


def guarded(out: dict[str, Any], key: str, fn: Callable[[], Any]) -> Any:
    """Run one section; a failure is recorded under ``key`` with its last lines, the rest go on."""
    say(f"{key} ...")
    t0 = time.perf_counter()
    try:
        out[key] = fn()
    except Exception as err:  # noqa: BLE001 - a check that fails is a finding, not the end of the run
        out[key] = {"error": f"{type(err).__name__}: {err}", "trace": traceback.format_exc().splitlines()[-8:]}
    say(f"{key} done in {time.perf_counter() - t0:.1f} s")
    return out[key]


# -- embed ---------------------------------------------------------------------------------

def apibench_chunks(data: Path, count: Callable[[str], int], max_tokens: int) -> tuple[list[str], list[str], list[dict]]:
    """(embedded chunk texts, their document's api_call, the records), chunked as ingest does."""
    from rag.config import CorpusConfig
    from rag.ingest.chunker import Chunker
    from rag.ingest.context import add_context, embed_text
    from rag.ingest.parsers import parse_bytes

    corpus = CorpusConfig()
    chunker = Chunker(count, min(corpus.chunk_tokens, max_tokens - 2), corpus.chunk_overlap, reserve_heading=True)
    recs = read_lines(data / "torchhub_api.jsonl")
    texts: list[str] = []
    owner: list[str] = []
    for i, rec in enumerate(recs):
        doc = parse_bytes(render(rec).encode(), "markdown", f"{i:03d}.md")
        specs = add_context(chunker.chunk(doc, f"{i:03d}.md"), doc.title, count, max_tokens - 2)
        texts += [embed_text(s) for s in specs]
        owner += [rec["api_call"]] * len(specs)
    return texts, owner, recs


def doc_recall(qv: Any, cv: Any, owner: list[str], gold: list[str]) -> dict[str, float]:
    import numpy as np

    top = np.argsort(-(qv @ cv.T), axis=1)[:, :50]
    ranks = []
    for row, want in zip(top, gold, strict=True):
        docs = list(dict.fromkeys(owner[j] for j in row))
        ranks.append(docs.index(want) + 1 if want in docs else None)
    return {f"recall@{k}": round(sum(1 for r in ranks if r is not None and r <= k) / len(ranks), 4) for k in (1, 5, 10)}


def part_embed(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import torch

    from rag.index.embedder import SentenceEmbedder

    out: dict[str, Any] = {"benchmark": "cuda-embed", "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "machine": machine()}
    torch.set_num_threads(os.cpu_count() or 1)
    cpu = SentenceEmbedder(args.minilm, "minilm", device="cpu", precision="fp32")
    texts, owner, _ = apibench_chunks(args.data, cpu.count_tokens, cpu.max_tokens)
    evals = read_lines(args.data / "torchhub_eval.json")
    questions = [question_of(e["code"]) for e in evals]
    gold = [e["api_call"] for e in evals]
    out["corpus"] = {"chunks": len(texts), "documents": len(set(owner)), "eval_questions": len(questions),
                     "mean_tokens": round(sum(cpu._token_lengths(texts)) / len(texts), 1)}
    copies = max(1, args.chunks // len(texts))
    big = texts * copies  # the throughput corpus: the real chunks, repeated
    cpu_n = len(texts) * max(1, args.cpu_chunks // len(texts))
    variants: list[tuple[str, dict[str, Any]]] = [
        ("cpu fp32 batch 32", {"device": "cpu", "precision": "fp32"}),
        ("cuda fp32 batch 32", {"device": "cuda", "precision": "fp32"}),
        ("cuda fp16 batch 32", {"device": "cuda", "precision": "fp16"}),
        ("cuda fp16 batch 256", {"device": "cuda", "precision": "fp16", "batch_size": 256}),
        ("cuda fp16 16k tokens", {"device": "cuda", "precision": "fp16", "batch_tokens": 16384}),
        ("cuda fp16 64k tokens", {"device": "cuda", "precision": "fp16", "batch_tokens": 65536}),
    ]
    ref: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for name, kw in variants:
        def one(name: str = name, kw: dict[str, Any] = kw) -> dict[str, Any]:
            emb = cpu if name.startswith("cpu") else SentenceEmbedder(args.minilm, "minilm", **kw)
            corpus = big[:cpu_n] if kw["device"] == "cpu" else big
            emb.encode(corpus[:256])  # warm-up: kernels, allocator
            if kw["device"] == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            emb.encode(corpus)
            if kw["device"] == "cuda":
                torch.cuda.synchronize()
            secs = time.perf_counter() - t0
            cv, qv = emb.encode(texts), emb.encode(questions)
            row = {"variant": name, "precision": emb.precision, "chunks": len(corpus), "seconds": round(secs, 2),
                   "chunks_per_s": round(len(corpus) / secs, 1), **doc_recall(qv, cv, owner, gold)}
            if kw["device"] == "cuda":
                row["peak_vram_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
            if not ref:
                ref.update(cv=cv, qv=qv)
            else:
                cos = (cv * ref["cv"]).sum(axis=1)
                row["cosine_to_cpu_fp32_min"] = round(float(cos.min()), 6)
                row["cosine_to_cpu_fp32_mean"] = round(float(cos.mean()), 6)
            return row

        holder: dict[str, Any] = {}
        rows.append(guarded(holder, name, one))
    base = next((r["chunks_per_s"] for r in rows if r.get("variant") == "cpu fp32 batch 32"), None)
    for r in rows:
        if base and "chunks_per_s" in r:
            r["speed_vs_cpu_fp32"] = round(r["chunks_per_s"] / base, 2)
    out["embedding"] = rows

    def retriever() -> dict[str, Any]:
        from builder.retriever.pairs import Pair
        from builder.retriever.trainer import train_embedder
        from rag.config import RetrieverTrainConfig

        cv, qv = ref["cv"], ref["qv"]
        by_call: dict[str, list[int]] = {}
        for j, call in enumerate(owner):
            by_call.setdefault(call, []).append(j)
        trains = [r for r in read_lines(args.data / "torchhub_train.json") if r.get("api_call") in by_call]
        tq = [train_question(r["code"]) for r in trains]
        tv = cpu.encode(tq)
        sims = tv @ cv.T
        pairs = []
        for i, r in enumerate(trains):
            mine = by_call[r["api_call"]]
            pos = next((j for j in mine if r["api_call"] in texts[j]), mine[0])
            neg = next(int(j) for j in np.argsort(-sims[i]) if owner[int(j)] != r["api_call"])
            pairs.append(Pair(question_id=f"t{i}", question=tq[i], positive=texts[pos], negatives=[texts[neg]]))
        pairs = pairs[: args.pairs or None]
        res: dict[str, Any] = {"pairs": len(pairs), "base": doc_recall(qv, cv, owner, gold)}
        for epochs in [float(x) for x in args.retriever_epochs.split(",")]:
            cfg = RetrieverTrainConfig(epochs=epochs)
            with tempfile.TemporaryDirectory() as tmp:
                stats = train_embedder(args.minilm, pairs, Path(tmp) / "tuned", cfg, device="auto")
                tuned = SentenceEmbedder(Path(tmp) / "tuned", "tuned", device="auto", precision="auto")
                res[f"epochs {epochs:g}"] = {"device": stats.device, "steps": stats.steps, "seconds": stats.seconds,
                                             "final_loss": stats.final_loss,
                                             **doc_recall(tuned.encode(questions), tuned.encode(texts), owner, gold)}
        return res

    guarded(out, "train_retriever", retriever)
    return out


# -- train ---------------------------------------------------------------------------------

def random_base(arch: Path, dest: Path) -> Path:
    """A model folder with ``arch``'s config and tokenizer and random weights (seed 0)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    cfg = AutoConfig.from_pretrained(arch)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(dest)
    AutoTokenizer.from_pretrained(arch).save_pretrained(dest)
    return dest


def bench_train(base: Path, out_dir: Path, epochs: float, quantization: str, env: dict[str, str],
                with_eval: bool, rows: int) -> dict[str, Any]:
    """One ``benchmarks/train.py --child`` run (its own process: clean peak memory, its own device)."""
    data = REPO / "training_data" / "sample-kestrel.train.jsonl"
    cmd = [sys.executable, str(REPO / "benchmarks" / "train.py"), "--child", "--rows", str(rows), "--epochs", str(epochs),
           "--batch-size", "4", "--backend", "hf", "--variant", "gathered", "--quantization", quantization,
           "--data", str(data), "--base", str(base)]
    if with_eval:
        cmd += ["--eval-data", str(REPO / "training_data" / "sample-kestrel.eval.jsonl")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-6:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def part_train(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from builder.train.backends import bitsandbytes_importable, select_backend, unsloth_importable

    out: dict[str, Any] = {"benchmark": "cuda-train", "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "machine": machine(), "weights": "random (seed 0), the real architecture and tokenizer"}
    be = select_backend("auto")
    out["auto"] = {"backend": be.name, "unsloth_importable": unsloth_importable(),
                   "bitsandbytes_importable": bitsandbytes_importable(), "precision": be.training_precision()}
    from builder.families import get_family

    out["auto"]["preflight"] = be.preflight(get_family("smollm2"), 4, 1024)
    work = Path(tempfile.mkdtemp(prefix="raftsmith-cuda-"))
    base = random_base(args.arch, work / "base")
    env = dict(os.environ)
    runs: dict[str, Any] = {}
    runs["cuda nf4"] = guarded(runs, "cuda nf4", lambda: bench_train(base, work, args.epochs, "nf4", env, True, args.rows))
    runs["cuda bf16"] = guarded(runs, "cuda bf16", lambda: bench_train(base, work, args.epochs, "none", env, True, args.rows))
    cpu_env = {**env, "CUDA_VISIBLE_DEVICES": ""}
    runs["cpu fp32"] = guarded(runs, "cpu fp32", lambda: bench_train(base, work, 1.0, "auto", cpu_env, False, args.rows))
    cpu_tps = (runs.get("cpu fp32") or {}).get("tokens_per_s")
    for r in runs.values():
        if cpu_tps and isinstance(r, dict) and r.get("tokens_per_s"):
            r["speed_vs_cpu"] = round(r["tokens_per_s"] / cpu_tps, 2)
    out["runs"] = runs

    def merge() -> dict[str, Any]:
        from builder.export.run import merge_adapter
        from builder.train.run import run_train
        from rag.config import init_workspace

        ws = init_workspace(work / "ws", corpus_name="kestrel")
        ws.config.student.base = str(base)
        ws.config.student.quantization = "nf4"
        res = run_train(ws, epochs=1.0, backend="hf",
                        train_file=REPO / "training_data" / "sample-kestrel.train.jsonl")
        merged = merge_adapter(base, res.adapter_dir, work / "merged")
        from safetensors import safe_open

        keys: list[str] = []
        for f in sorted(merged.glob("*.safetensors")):
            with safe_open(str(f), "pt") as fh:
                keys += list(fh.keys())
        return {"adapter": sorted(p.name for p in res.adapter_dir.iterdir()), "merged_tensors": len(keys),
                "lora_tensors_left": sum("lora_" in k for k in keys), "cuda_memory_after_gb":
                round(torch.cuda.memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None}

    guarded(out, "merge_after_cuda_training", merge)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="part", required=True)
    e = sub.add_parser("embed")
    e.add_argument("--minilm", type=Path, required=True)
    e.add_argument("--data", type=Path, required=True)
    e.add_argument("--chunks", type=int, default=40000, help="chunks embedded per CUDA variant (real ones, repeated)")
    e.add_argument("--cpu-chunks", type=int, default=4000, help="chunks embedded on the CPU")
    e.add_argument("--pairs", type=int, default=0, help="at most this many retriever training pairs (0: all)")
    e.add_argument("--retriever-epochs", default="3,10", help="train-retriever runs, by epochs")
    t = sub.add_parser("train")
    t.add_argument("--arch", type=Path, required=True)
    t.add_argument("--epochs", type=float, default=2.0)
    t.add_argument("--rows", type=int, default=39)
    for p in (e, t):
        p.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    result = part_embed(args) if args.part == "embed" else part_train(args)
    dest = args.out or RESULTS / f"cuda-{args.part}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
