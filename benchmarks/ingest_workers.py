"""Parse workers: ``corpus.parse_workers`` 0 (files parsed in the ingest process, between the
embedder's batches) against 1 and 2 worker processes, on a PDF corpus (pypdf is the slow parser)
and on markdown.

    nice -n 19 .venv/bin/python benchmarks/ingest_workers.py [--pdfs 60] [--workers 0,1,2]

Each ingest runs in a fresh child process on a fresh workspace (real MiniLM, SQLite, FAISS).
PDFs: made with pypdf, 12 pages each, every line its own text object (as typeset documents
are), ~45 words a page; markdown: 10 sections of ~40 words per file. ``parse_s`` is the
time to read, parse and chunk the same files with the tokenizer alone. Writes
benchmarks/results/ingest_workers.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

OUT = REPO / "benchmarks" / "results" / "ingest_workers.json"

CHILD = """
import json, sys, time
from rag.config import load_workspace
from rag.ingest.pipeline import ingest
t0 = time.perf_counter()
report = ingest(load_workspace(sys.argv[1]))
print(json.dumps({"seconds": time.perf_counter() - t0, "chunks": report.total_chunks,
                  "counts": report.counts()}))
"""

PARSE_ONLY = """
import json, sys, time
from pathlib import Path
from rag.config import load_workspace
from rag.ingest.batches import Candidate
from rag.ingest.parsers import kind_for
from rag.ingest import workers as w
ws = load_workspace(sys.argv[1])
w.worker_start(sys.argv[1], False)
files = sorted((ws.root / "docs").iterdir())
t0 = time.perf_counter()
n = 0
for f in files:
    res, item, _ = w.worker_read(Candidate(f"docs/{f.name}", kind_for(f), f), None)
    n += len(item.specs) if item else 0
print(json.dumps({"seconds": time.perf_counter() - t0, "chunks": n}))
"""


def _words(rng: random.Random, n: int) -> str:
    syl = ["ka", "lo", "ven", "tri", "mar", "sol", "dex", "pru", "zan", "ith", "or", "bel"]
    return " ".join("".join(rng.choice(syl) for _ in range(rng.randint(2, 3))) for _ in range(n))


def write_pdfs(docs: Path, n: int, seed: int = 0) -> None:
    from pdf_builder import make_content_pdf

    rng = random.Random(seed)
    for d in range(n):
        pages = []
        for pg in range(12):
            lines = [f"Unit {d} page {pg} line {ln} {_words(rng, 5)} {rng.randint(0, 9999)}" for ln in range(9)]
            ops = "".join(f"BT /F1 10 Tf 20 {280 - 14 * i} Td ({t}) Tj ET\n" for i, t in enumerate(lines))
            pages.append(ops.encode("latin-1"))
        (docs / f"unit{d:04d}.pdf").write_bytes(make_content_pdf(pages))


def write_markdown(docs: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    for d in range(n):
        parts = [f"# Unit {d}\n"] + [f"\n## Part {s}\n\n{_words(rng, 40)} {rng.randint(0, 10**6)}.\n" for s in range(10)]
        (docs / f"unit{d:04d}.md").write_text("".join(parts))


def workspace(root: Path, kind: str, n: int, workers: int) -> Path:
    from rag.config import init_workspace

    ws = init_workspace(root, corpus_name="w")
    shutil.rmtree(ws.root / "docs")
    (ws.root / "docs").mkdir()
    (write_pdfs if kind == "pdf" else write_markdown)(ws.root / "docs", n)
    cfg = ws.config_path
    cfg.write_text(cfg.read_text().replace("  parse_workers: 0", f"  parse_workers: {workers}"))
    return cfg


def child(code: str, cfg: Path) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-c", code, str(cfg)], capture_output=True, text=True, check=False,
                          env=dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"))
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pdfs", type=int, default=60)
    ap.add_argument("--markdown", type=int, default=200)
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ingest-workers-") as tmp:
        for kind, n in (("pdf", args.pdfs), ("markdown", args.markdown)):
            parse = child(PARSE_ONLY, workspace(Path(tmp) / f"{kind}-parse", kind, n, 0))
            print(f"{kind}: {n} files, parse + chunk alone {parse['seconds']:.1f} s ({parse['chunks']} chunks)", flush=True)
            for w in workers:
                r = child(CHILD, workspace(Path(tmp) / f"{kind}-{w}", kind, n, w))
                r.update(kind=kind, files=n, parse_workers=w, parse_s=round(parse["seconds"], 2),
                         seconds=round(r["seconds"], 2))
                print(f"  parse_workers {w}: {r['seconds']} s, {r['chunks']} chunks", flush=True)
                runs.append(r)
    ratios = {}
    for kind in ("pdf", "markdown"):
        base = next(r for r in runs if r["kind"] == kind and r["parse_workers"] == workers[0])
        for r in runs:
            if r["kind"] == kind and r is not base:
                ratios[f"{kind}_speedup_workers_{r['parse_workers']}_vs_{workers[0]}"] = round(base["seconds"] / r["seconds"], 3)
    doc = {"benchmark": "ingest_workers", "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                       "load_avg_before": list(os.getloadavg())},
           "runs": runs, "speedup": ratios}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(ratios, indent=1))


if __name__ == "__main__":
    main()
