"""The page's cost on top of ``ask``: first-answer latency through ``raftsmith ui`` vs ``rag.answer.answer``.

Same workspace, question, model (the packaged SmolLM2 as "base"), max_tokens and temperature 0,
alternating which path goes first each round so load drift hits both:

* **cold**: ``ask``'s path (a fresh Answerer: embedder and model load, retrieve, generate,
  audit) vs a freshly built page server answering its first POST /api/ask over HTTP (the
  NDJSON stream read by httpx until the "done" line). Target: page <= ask + 10 %.
* **warm**: the next question on the same Answerer vs on the same running page.
* **transport**: per page answer, the client's wall time vs the Answerer's own latency for
  that very answer: what HTTP, the guard and the stream add, free of load drift between calls.

    python benchmarks/ui_latency.py [--rounds 3] [--max-tokens 32] [--workspace DIR]

Writes benchmarks/results/ui_latency.json (medians, the ratios, the machine's load).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
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
            out.append({"total_s": time.perf_counter() - t, "first_token_s": first[0] if first else None, "raw": res.raw})
    finally:
        engine.close()
    return out


def _via_page(ws: Any, questions: list[str]) -> list[dict[str, Any]]:
    import httpx

    from rag.ui.security import CSRF_HEADER
    from rag.ui.server import make_ui_server

    server = make_ui_server(ws, port=0, model="base")
    server.start()
    origin = f"http://127.0.0.1:{server.http.port}"
    headers = {"Origin": origin, CSRF_HEADER: server.state.csrf_token, "Content-Type": "application/json"}
    out = []
    try:
        with httpx.Client(base_url=origin, timeout=600) as client:
            for q in questions:
                first = None
                raw = None
                engine_s = None
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
                        elif event["type"] == "error":
                            raise SystemExit(f"the page failed: {event['message']}")
                out.append({"total_s": time.perf_counter() - t, "first_token_s": first, "raw": raw, "engine_s": engine_s})
    finally:
        server.stop()
    return out


def _median(xs: list[float]) -> float:
    return round(statistics.median(xs), 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--workspace", help="A workspace to use (default: the Kestrel sample, ingested in a temp dir).")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "ui_latency.json"))
    args = ap.parse_args()
    from rag.config import load_workspace

    load_start = os.getloadavg()
    runs: dict[str, list[list[dict[str, Any]]]] = {"ask": [], "page": []}
    with tempfile.TemporaryDirectory() as d:
        ws = load_workspace(_workspace(args.workspace, Path(d), args.max_tokens) / "raftsmith.yaml")
        for i in range(args.rounds):
            order = ("ask", "page") if i % 2 == 0 else ("page", "ask")
            for path in order:
                runs[path].append((_via_ask if path == "ask" else _via_page)(ws, [Q, Q2]))
    cold = {p: [r[0]["total_s"] for r in rs] for p, rs in runs.items()}
    warm = {p: [r[1]["total_s"] for r in rs] for p, rs in runs.items()}
    ttft = {p: [r[0]["first_token_s"] for r in rs if r[0]["first_token_s"] is not None] for p, rs in runs.items()}
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
        "page_transport_overhead_ratio": round(statistics.median(transport), 4),
        "identical_answers": f"{identical}/{args.rounds}",
        "samples_s": {"cold": cold, "warm": warm},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"first answer: page {result['cold_first_answer_s']['page']:.2f} s vs ask {result['cold_first_answer_s']['ask']:.2f} s "
          f"({result['cold_overhead_ratio']:+.1%}); warm answer: page {result['warm_answer_s']['page']:.2f} s vs "
          f"ask {result['warm_answer_s']['ask']:.2f} s ({result['warm_overhead_ratio']:+.1%}); HTTP+stream on top of the "
          f"same answer {result['page_transport_overhead_ratio']:+.1%}; identical answers "
          f"{result['identical_answers']}. -> {args.out}")


if __name__ == "__main__":
    main()
