"""The page's cost on top of ``ask``: first-answer latency through ``raftsmith ui`` vs ``rag.answer.answer``.

Same workspace, question, model (the packaged SmolLM2 as "base"), max_tokens and temperature 0,
alternating which path goes first each round so load drift hits both:

* **cold**: ``ask``'s path (a fresh Answerer: embedder and model load, retrieve, generate,
  audit) vs a freshly built page server answering its first POST /api/ask over HTTP (the
  NDJSON stream read by httpx until the "done" line). Target: page <= ask + 10 %. Each path
  runs in a process of its own (``--child``), as a user's ``ask`` and ``ui`` do: in one
  process the two would share the loaded llama.cpp model and its prompt cache, and the
  second path's "cold" answer would not be cold.
* **warm**: the next question on the same Answerer vs on the same running page.
* **transport**: per page answer, the client's wall time vs the Answerer's own latency for
  that very answer: what HTTP, the guard and the stream add, free of load drift between calls.

    python benchmarks/ui_latency.py [--rounds 7] [--max-tokens 32] [--workspace DIR]

Writes benchmarks/results/ui_latency.json (medians, the ratios, the machine's load).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

Q = "Which TCP port does the Kestrel KX-7 relay listen on by default for sensor ingest?"
Q2 = "How do I rotate the KX-7 relay's TLS certificate?"


def _workspace(arg: str | None, tmp: Path, max_tokens: int) -> Path:
    from rag.config import init_workspace, load_workspace
    from rag.ingest.pipeline import ingest

    if arg:
        root = Path(arg)
    else:
        ws = init_workspace(tmp / "ws", corpus_name="kestrel")
        shutil.rmtree(ws.root / "docs")
        shutil.copytree(REPO / "examples" / "kestrel" / "docs", ws.root / "docs")
        root = ws.root
    cfg_path = root / "raftsmith.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg.setdefault("chat", {}).update({"temperature": 0.0, "max_tokens": max_tokens})
    cfg_path.write_text(yaml.safe_dump(cfg))
    if not arg:
        ingest(load_workspace(cfg_path))
    return root


def _via_ask(ws: Any, questions: list[str]) -> list[dict[str, Any]]:
    from rag.answer import Answerer

    engine = Answerer(ws)
    out = []
    try:
        for q in questions:
            first: list[float] = []
            t = time.perf_counter()
            res = engine.answer(q, model="base", on_token=lambda _p, f=first, t=t: f or f.append(time.perf_counter() - t))
            out.append({"total_s": time.perf_counter() - t, "first_token_s": first[0] if first else None, "raw": res.raw,
                        "timings": res.timings})
    finally:
        engine.close()
    return out


def _via_page(ws: Any, questions: list[str], warm: bool = False) -> list[dict[str, Any]]:
    import httpx

    from rag.ui.security import CSRF_HEADER
    from rag.ui.server import make_ui_server

    server = make_ui_server(ws, port=0, model="base")
    server.start()
    warm_s = None
    if warm:  # as `raftsmith ui` does: load the models while the user opens the page
        t = time.perf_counter()
        server.warm_up().join()
        warm_s = time.perf_counter() - t
    origin = f"http://127.0.0.1:{server.http.port}"
    headers = {"Origin": origin, CSRF_HEADER: server.state.csrf_token, "Content-Type": "application/json"}
    out = []
    try:
        with httpx.Client(base_url=origin, timeout=600) as client:
            for q in questions:
                first = None
                raw = None
                engine_s = None
                timings: dict[str, float] = {}
                t = time.perf_counter()
                with client.stream("POST", "/api/ask", headers=headers,
                                   content=json.dumps({"question": q, "model": "base", "rag": True})) as resp:
                    resp.raise_for_status()
                    for line in resp.iter_lines():
                        event = json.loads(line)
                        if event["type"] == "token" and first is None:
                            first = time.perf_counter() - t
                        elif event["type"] == "done":
                            raw = event["result"]["raw"]
                            engine_s = event["result"]["latency_ms"] / 1000
                            timings = event["result"]["timings"]
                        elif event["type"] == "error":
                            raise SystemExit(f"the page failed: {event['message']}")
                out.append({"total_s": time.perf_counter() - t, "first_token_s": first, "raw": raw, "engine_s": engine_s,
                            "timings": timings, "warm_up_s": warm_s})
    finally:
        server.stop()
    return out


def _median(xs: list[float]) -> float:
    return round(statistics.median(xs), 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--workspace", help="A workspace to use (default: the Kestrel sample, ingested in a temp dir).")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "ui_latency.json"))
    ap.add_argument("--child", choices=("ask", "page", "page-warm"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    from rag.config import load_workspace

    if args.child:  # one path, in a fresh process: print its two answers as JSON
        ws = load_workspace(Path(args.workspace) / "raftsmith.yaml")
        out = _via_ask(ws, [Q, Q2]) if args.child == "ask" else _via_page(ws, [Q, Q2], warm=args.child == "page-warm")
        print(json.dumps(out))
        return
    load_start = os.getloadavg()
    runs: dict[str, list[list[dict[str, Any]]]] = {"ask": [], "page": [], "page-warm": []}
    with tempfile.TemporaryDirectory() as d:
        root = _workspace(args.workspace, Path(d), args.max_tokens)
        for i in range(args.rounds):
            order = ("ask", "page", "page-warm") if i % 2 == 0 else ("page-warm", "page", "ask")
            for path in order:
                proc = subprocess.run([sys.executable, __file__, "--child", path, "--workspace", str(root)],
                                      check=True, capture_output=True, text=True)
                runs[path].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    warmed = runs.pop("page-warm")
    cold = {p: [r[0]["total_s"] for r in rs] for p, rs in runs.items()}
    warm = {p: [r[1]["total_s"] for r in rs] for p, rs in runs.items()}
    ttft = {p: [r[0]["first_token_s"] for r in rs if r[0]["first_token_s"] is not None] for p, rs in runs.items()}
    after_warm_up = [r[0]["total_s"] for r in warmed]
    # what HTTP, the guard and the NDJSON stream add to the very same answer (load-robust: one call)
    transport = [(r[k]["total_s"] - r[k]["engine_s"]) / r[k]["engine_s"] for r in runs["page"] for k in (0, 1)]
    identical = sum(a[0]["raw"] == p[0]["raw"] and a[1]["raw"] == p[1]["raw"] for a, p in zip(runs["ask"], runs["page"], strict=True))
    result = {
        "benchmark": "ui_latency", "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg_start": load_start,
                    "loadavg_end": os.getloadavg()},
        "rounds": args.rounds, "max_tokens": args.max_tokens, "target_overhead_ratio": 0.10,
        "cold_first_answer_s": {p: _median(v) for p, v in cold.items()},
        "cold_first_token_s": {p: _median(v) for p, v in ttft.items() if v},
        "warm_answer_s": {p: _median(v) for p, v in warm.items()},
        "cold_overhead_ratio": round(_median(cold["page"]) / _median(cold["ask"]) - 1, 4),
        "warm_overhead_ratio": round(_median(warm["page"]) / _median(warm["ask"]) - 1, 4),
        # per round, page vs ask run back to back: drift between rounds cancels out
        "cold_overhead_paired_median": round(statistics.median(p / a - 1 for p, a in zip(cold["page"], cold["ask"], strict=True)), 4),
        "warm_overhead_paired_median": round(statistics.median(p / a - 1 for p, a in zip(warm["page"], warm["ask"], strict=True)), 4),
        "page_transport_overhead_ratio": round(statistics.median(transport), 4),
        "identical_answers": f"{identical}/{args.rounds}",
        # `raftsmith ui` loads the models at start: the first question typed after that
        "ui_first_answer_after_warm_up_s": _median(after_warm_up),
        "ui_warm_up_s": _median([r[0]["warm_up_s"] for r in warmed]),
        "ui_after_warm_up_vs_cold_ask_ratio": round(_median(after_warm_up) / _median(cold["ask"]), 4),
        "samples_s": {"cold": cold, "warm": warm},
        # the Answerer's own phase timings (ms) per answer, to see where a difference comes from
        "phases_ms": {p: {"cold": [r[0]["timings"] for r in rs], "warm": [r[1]["timings"] for r in rs]} for p, rs in runs.items()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"first answer: page {result['cold_first_answer_s']['page']:.2f} s vs ask {result['cold_first_answer_s']['ask']:.2f} s "
          f"({result['cold_overhead_ratio']:+.1%}, paired per round {result['cold_overhead_paired_median']:+.1%}); warm answer: page {result['warm_answer_s']['page']:.2f} s vs "
          f"ask {result['warm_answer_s']['ask']:.2f} s ({result['warm_overhead_ratio']:+.1%}, paired "
          f"{result['warm_overhead_paired_median']:+.1%}); HTTP+stream on top of the "
          f"same answer {result['page_transport_overhead_ratio']:+.1%}; identical answers "
          f"{result['identical_answers']}; `raftsmith ui` (models loaded at start, {result['ui_warm_up_s']:.1f} s) answers its "
          f"first question in {result['ui_first_answer_after_warm_up_s']:.2f} s. -> {args.out}")


if __name__ == "__main__":
    main()
