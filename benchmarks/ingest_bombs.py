"""Ingest bombs: time and peak RSS per input MB of reading, parsing and chunking (no embedding).

    python benchmarks/ingest_bombs.py [--sizes 1,2,4,8] [--pages 250,500,1000,2000] [--baseline REV]

Cases, each in a fresh child process; ``work_rss_mb`` is the peak RSS while the case runs
minus the RSS just before the file is read (the MiniLM tokenizer is loaded by then; on Linux
the peak mark is reset there), ``peak_rss_mb`` the process's peak since that reset:

- ``txt``: a single-line .txt of N MB (words, no newline, no sentence end), read, decoded and
  chunked with the pipeline's chunker and the real MiniLM token counter.
- ``pdf``: an N-page PDF with about 2 KB of text per page, parsed with pypdf under the default
  limits, then chunked; parse and chunk times are reported apart.
- bombs, under the default config (max_file_mb 20): a 70 MB content stream in a PDF of a few
  hundred KB (skipped before pypdf parses it), the same bomb under a raised
  ``max_pdf_page_mb`` (how long pypdf itself would take, on a smaller stream), and a 16.8 MB
  single-line .txt (under max_file_mb: it is chunked).
- ``--baseline REV``: the chunker of that git revision, side by side with the current one on
  the smaller inputs (the issue's quadratic cases). Time ratios are from this one run.

Writes benchmarks/results/ingest_bombs.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
OUT = ROOT / "benchmarks" / "results" / "ingest_bombs.json"
VOCAB = ["valve", "pump", "relay", "opens", "at", "bar", "sensor", "kelvin", "gateway", "port", "the", "flange"]


def _rss_now_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    """Peak RSS since the last _reset_peak (VmHWM), else since the process started."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak() -> None:
    """Start the peak-RSS mark afresh (Linux: writing 5 to clear_refs resets VmHWM)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


# --- inputs (built by the parent, cached in the work folder) ----------------------------------
def make_line_txt(path: Path, mb: float) -> None:
    rnd = random.Random(int(mb * 1000))
    target = int(mb * 1_000_000)
    with path.open("w") as f:
        size = 0
        while size < target:
            piece = " ".join(rnd.choice(VOCAB) + str(rnd.randrange(100)) for _ in range(1000)) + " "
            f.write(piece)
            size += len(piece)


def make_pages_pdf(path: Path, pages: int) -> None:
    from pdf_builder import make_content_pdf, text_ops

    rnd = random.Random(pages)
    contents = []
    for p in range(pages):
        lines = [" ".join(rnd.choice(VOCAB) for _ in range(10)) + "." for _ in range(28)]  # ~2 KB of text
        contents.append(b"".join(text_ops(f"{line} p{p}") for line in lines))
    path.write_bytes(make_content_pdf(contents))


def make_stream_bomb(path: Path, mb: float) -> None:
    from pdf_builder import make_content_pdf, text_ops

    line = text_ops("The heron pump runs at 1450 rpm and more words here")
    path.write_bytes(make_content_pdf([text_ops("A harmless first page."), line * int(mb * 1_000_000 / len(line))]))


# --- the measured work (child process) ----------------------------------------------------------
def child(case: dict[str, Any]) -> dict[str, Any]:
    from rag.config import CorpusConfig, EmbeddingConfig
    from rag.index.embedder import load_embedder
    from rag.ingest.parsers import SkipFile, TextLimits, kind_for, parse_bytes
    from rag.ingest.reading import read_regular

    embedder = load_embedder(EmbeddingConfig())
    embedder.count_tokens("warm up the tokenizer")
    if case.get("chunker_path"):
        spec = importlib.util.spec_from_file_location("baseline_chunker", case["chunker_path"])
        assert spec and spec.loader
        mod = importlib.util.module_from_spec(spec)
        sys.modules["baseline_chunker"] = mod
        spec.loader.exec_module(mod)
        chunker_cls = mod.Chunker
    else:
        from rag.ingest.chunker import Chunker as chunker_cls
    corpus = CorpusConfig(**case.get("corpus", {}))
    chunker = chunker_cls(embedder.count_tokens, min(corpus.chunk_tokens, embedder.max_tokens - 2), corpus.chunk_overlap,
                          reserve_heading=True)
    path = Path(case["path"])
    _reset_peak()
    base = _rss_now_mb()
    t0 = time.perf_counter()
    out: dict[str, Any] = {"file_mb": round(path.stat().st_size / 1e6, 3)}
    try:
        data, _ = read_regular(path, int(corpus.max_file_mb * 1_000_000))
        doc = parse_bytes(data, kind_for(path) or "text", path.name, TextLimits.for_corpus(corpus))
        del data
        t1 = time.perf_counter()
        specs = chunker.chunk(doc, path.name)
        t2 = time.perf_counter()
        out.update(status="ok", text_mb=round(len(doc.text) / 1e6, 3), pages=len(doc.pages) or None, chunks=len(specs),
                   parse_s=round(t1 - t0, 3), chunk_s=round(t2 - t1, 3), max_chunk_tokens=max(s.n_tokens for s in specs),
                   max_chunk_chars=max(len(s.text) for s in specs))
    except SkipFile as why:
        out.update(status="skipped", reason=str(why), parse_s=round(time.perf_counter() - t0, 3), chunk_s=0.0)
    out["total_s"] = round(out["parse_s"] + out["chunk_s"], 3)
    out["peak_rss_mb"] = round(_peak_mb(), 1)
    out["work_rss_mb"] = round(max(0.0, _peak_mb() - base), 1)
    return out


def run_child(case: dict[str, Any], timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", json.dumps(case)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "total_s": timeout}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"status": "failed", "stderr": proc.stderr[-2000:]}
    return json.loads(lines[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1,2,4,8", help="single-line .txt sizes in MB")
    ap.add_argument("--pages", default="250,500,1000,2000", help="PDF page counts")
    ap.add_argument("--baseline", default=None, help="git revision whose chunker runs side by side (e.g. a5c4cbb)")
    ap.add_argument("--baseline-sizes", default="0.25,0.5,1")
    ap.add_argument("--baseline-pages", default="250,500,1000")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per case")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    work = Path(tempfile.mkdtemp(prefix="ingest-bombs-"))
    load_start = os.getloadavg()
    results: dict[str, Any] = {"txt_single_line": [], "pdf_pages": [], "bombs": {}, "baseline": None}

    def say(label: str, r: dict[str, Any]) -> None:
        rate = f"{r['total_s'] / r['file_mb']:.2f} s/MB" if r.get("file_mb") and r.get("status") == "ok" else ""
        print(f"{label:<34} {r.get('status', '?'):<8} {r.get('total_s', 0):>8.2f} s  {rate:>12}  "
              f"work RSS {r.get('work_rss_mb', 0):>7.1f} MB  {r.get('reason', '')[:70]}", flush=True)

    txt_sizes = [float(x) for x in args.sizes.split(",") if x]
    pdf_pages = [int(x) for x in args.pages.split(",") if x]
    for mb in txt_sizes:
        p = work / f"line_{mb}MB.txt"
        make_line_txt(p, mb)
        r = run_child({"path": str(p)}, args.timeout)
        r["mb"] = mb
        results["txt_single_line"].append(r)
        say(f"txt one line {mb} MB", r)
    for n in pdf_pages:
        p = work / f"pages_{n}.pdf"
        make_pages_pdf(p, n)
        r = run_child({"path": str(p)}, args.timeout)
        r["n_pages"] = n
        results["pdf_pages"].append(r)
        say(f"pdf {n} pages", r)

    bomb = work / "bomb_70MB_stream.pdf"
    make_stream_bomb(bomb, 70)
    results["bombs"]["pdf_70MB_content_stream"] = r = run_child({"path": str(bomb)}, args.timeout)
    say("bomb: 70 MB content stream", r)
    small = work / "bomb_8MB_stream.pdf"
    make_stream_bomb(small, 8)
    results["bombs"]["pdf_8MB_stream_limit_raised"] = r = run_child(
        {"path": str(small), "corpus": {"max_pdf_page_mb": 100}}, args.timeout)
    say("8 MB stream, max_pdf_page_mb 100", r)
    big = work / "line_16.8MB.txt"
    make_line_txt(big, 16.8)
    results["bombs"]["txt_16.8MB_single_line"] = r = run_child({"path": str(big)}, args.timeout)
    say("bomb: 16.8 MB single-line txt", r)

    if args.baseline:
        old_src = subprocess.run(["git", "-C", str(ROOT), "show", f"{args.baseline}:rag/ingest/chunker.py"],
                                 capture_output=True, text=True, check=True).stdout
        old_path = work / "baseline_chunker.py"
        old_path.write_text(old_src)
        side: list[dict[str, Any]] = []
        for mb in [float(x) for x in args.baseline_sizes.split(",") if x]:
            p = work / f"line_{mb}MB.txt"
            make_line_txt(p, mb)
            new = run_child({"path": str(p)}, args.timeout)
            old = run_child({"path": str(p), "chunker_path": str(old_path)}, args.timeout)
            side.append({"input": f"txt one line {mb} MB", "new": new, "old": old,
                         "chunk_time_ratio_old_over_new": round(old.get("chunk_s", 0) / max(new.get("chunk_s", 0), 1e-3), 1)})
            say(f"  new, txt {mb} MB", new)
            say(f"  old, txt {mb} MB", old)
        for n in [int(x) for x in args.baseline_pages.split(",") if x]:
            p = work / f"pages_{n}.pdf"
            if not p.exists():
                make_pages_pdf(p, n)
            new = run_child({"path": str(p)}, args.timeout)
            old = run_child({"path": str(p), "chunker_path": str(old_path)}, args.timeout)
            side.append({"input": f"pdf {n} pages", "new": new, "old": old,
                         "chunk_time_ratio_old_over_new": round(old.get("chunk_s", 0) / max(new.get("chunk_s", 0), 1e-3), 1)})
            say(f"  new, pdf {n} pages", new)
            say(f"  old, pdf {n} pages", old)
        results["baseline"] = {"revision": args.baseline, "cases": side}

    rec = {
        "benchmark": "ingest_bombs",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "load_avg_start": load_start,
                    "python": platform.python_version()},
        "note": "read + parse + chunk only (no embedding); run under nice -n 19 on a shared machine, so absolute "
                "seconds are load-dependent: compare rows of this one run",
        **results,
    }
    rec["machine"]["load_avg_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rec, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
