"""Ingest memory against corpus size: peak RSS of a whole ``ingest`` (read, chunk, embed with
the packaged MiniLM, SQLite/FTS5, FAISS build and calibration) at 10k and 100k chunks.

    nice -n 19 .venv/bin/python benchmarks/ingest_memory.py [--sizes 10000,100000]
        [--commit-every 2048,1000000000] [--single-at 100000]

Each run is a fresh child process on a fresh workspace; its peak RSS is the child's
``ru_maxrss``; beside it, the peak of each phase sampled every 50 ms (reading, embedding and
committing; then the FAISS build). The corpus is synthetic: markdown files of 10 sections, each section one chunk
of ~25 tokens of made-up words with numbers (no two chunks alike, so every chunk is embedded).
``--commit-every`` lists the batch sizes run at every size (2048 is the default;
1000000000 makes the whole ingest one batch, as before batches existed); ``--single-at``
limits the one-batch runs to those sizes. The target (issue 17): peak RSS at 100k chunks
within 1.2x of that at 10k, with the default batch. Writes benchmarks/results/ingest_memory.json.
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
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

OUT = REPO / "benchmarks" / "results" / "ingest_memory.json"
SECTIONS = 10
WORDS = 8  # made-up words per chunk: ~25 tokens with the heading path and the numbers

CHILD = """
import json, resource, sys, threading, time
from rag.config import load_workspace
from rag.ingest import pipeline
from rag.ingest.pipeline import ingest

# the peak RSS of each phase: reading + embedding + commits, then the FAISS build
phase, peaks, stop = ["ingest"], {"ingest": 0.0, "faiss": 0.0}, threading.Event()
def sample():
    while not stop.is_set():
        with open("/proc/self/status") as f:
            rss = next(int(l.split()[1]) / 1024 for l in f if l.startswith("VmRSS:"))
        peaks[phase[0]] = max(peaks[phase[0]], rss)
        time.sleep(0.05)
threading.Thread(target=sample, daemon=True).start()
real_update = pipeline.update_faiss
def update(*a, **k):
    phase[0] = "faiss"
    return real_update(*a, **k)
pipeline.update_faiss = update
t0 = time.perf_counter()
report = ingest(load_workspace(sys.argv[1]))
seconds = time.perf_counter() - t0
stop.set()
from rag.index.stats import index_stats
st = index_stats(load_workspace(sys.argv[1]).index_dir, measure_ram=False)
print(json.dumps({"seconds": seconds, "chunks": report.total_chunks, "embedded": report.embeddings_computed,
                  "faiss_kind": st["faiss_kind"], "store_mb": st.get("disk_mb", {}).get("store"),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "phase_peak_rss_mb": {k: round(v, 1) for k, v in peaks.items()}}))
"""


def say(msg: str) -> None:
    print(msg, flush=True)


def write_corpus(docs: Path, n_chunks: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    syllables = ["ka", "lo", "ven", "tri", "mar", "sol", "dex", "pru", "zan", "ith", "or", "bel", "qua", "nim"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(2, 3))) for _ in range(4000)]
    docs.mkdir(parents=True)
    for d in range(n_chunks // SECTIONS):
        parts = [f"# Unit {d}\n"]
        for s in range(SECTIONS):
            body = " ".join(rng.choice(words) for _ in range(WORDS))
            parts.append(f"\n## Part {s}\n\nUnit {d} part {s} holds {rng.randint(0, 10**6)} {body}.\n")
        (docs / f"unit{d:06d}.md").write_text("".join(parts))


def run(n_chunks: int, commit_every: int, work: Path) -> dict[str, Any]:
    from rag.config import init_workspace

    root = work / f"ws-{n_chunks}-{commit_every}"
    ws = init_workspace(root, corpus_name="scale")
    for p in (ws.root / "docs").iterdir():
        p.unlink()
    (ws.root / "docs").rmdir()
    write_corpus(ws.root / "docs", n_chunks)
    text = ws.config_path.read_text()
    ws.config_path.write_text(text.replace("  commit_every: 2048", f"  commit_every: {commit_every}"))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, str(ws.config_path)], capture_output=True, text=True,
                          env=dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"), check=False)
    if proc.returncode != 0:
        raise SystemExit(f"ingest of {n_chunks} chunks failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out.update(n_chunks=n_chunks, commit_every=commit_every, wall_s=round(time.perf_counter() - t0, 1),
               chunks_per_s=round(out["chunks"] / out["seconds"], 1), seconds=round(out["seconds"], 1),
               peak_rss_mb=round(out["peak_rss_mb"], 1))
    import shutil

    shutil.rmtree(root)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--commit-every", default="2048,1000000000")
    ap.add_argument("--single-at", default="100000", help="sizes at which batches other than the first are run")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    batches = [int(b) for b in args.commit_every.split(",")]
    single_at = {int(s) for s in args.single_at.split(",") if s}
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ingest-mem-") as tmp:
        for n in sizes:
            for i, b in enumerate(batches):
                if i > 0 and n not in single_at:
                    continue
                say(f"ingest {n} chunks, commit_every {b} ...")
                r = run(n, b, Path(tmp))
                say(f"  {r['seconds']} s ({r['chunks_per_s']} chunks/s), peak RSS {r['peak_rss_mb']} MB, "
                    f"FAISS {r['faiss_kind']}")
                results.append(r)
    by = {(r["n_chunks"], r["commit_every"]): r for r in results}
    ratios: dict[str, Any] = {}
    default = batches[0]
    if len(sizes) >= 2 and (sizes[0], default) in by and (sizes[-1], default) in by:
        ratios[f"peak_rss_{sizes[-1]}_vs_{sizes[0]}"] = round(
            by[(sizes[-1], default)]["peak_rss_mb"] / by[(sizes[0], default)]["peak_rss_mb"], 3)
    for b in batches[1:]:
        for n in sizes:
            if (n, b) in by and (n, default) in by:
                ratios[f"peak_rss_{n}_batch_{default}_vs_{b}"] = round(
                    by[(n, default)]["peak_rss_mb"] / by[(n, b)]["peak_rss_mb"], 3)
    doc = {"benchmark": "ingest_memory", "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                       "load_avg_before": list(os.getloadavg())},
           "corpus": f"synthetic markdown, {SECTIONS} one-chunk sections per file, ~25 tokens per chunk",
           "embedder": "packaged all-MiniLM-L6-v2 (torch backend, embedding defaults)",
           "runs": results, "ratios": ratios, "target": "peak RSS at 100k chunks <= 1.2x that at 10k"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    say(json.dumps(ratios, indent=1))


if __name__ == "__main__":
    main()
