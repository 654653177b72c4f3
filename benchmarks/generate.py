"""Benchmark: generation throughput at concurrency 1 vs 16, and the cost of a rerun.

A loopback OpenAI-compatible server adds a fixed 200 ms to every call (a stand-in for a
remote teacher's latency; the work on this side is real: the engine, the openai client,
schema validation, quote verification, fsync'ed appends, the SQLite cache). The sample
corpus is ingested into a temporary workspace; the 50 question-file items
plus one synthesized question per chunk at concurrency 1 and 16 (fresh cache each), then rerun from the cache after deleting the
output files. Writes benchmarks/results/generate.json.

    python benchmarks/generate.py [--delay-ms 200] [--out benchmarks/results/generate.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _reply(body: dict[str, Any]) -> str:
    """Quote the first prose line of the document the prompt names as the answer's source."""
    msgs = body.get("messages", [])
    user = next((m["content"] for m in reversed(msgs) if m.get("role") == "user"), "")
    if msgs and msgs[0]["content"].startswith("You write questions"):
        heading = re.search(r"section '([^']*)'", user)
        topic = heading.group(1) if heading else "the relay"
        return json.dumps({"questions": [{"question": f"What does the Kestrel KX-7 manual say about {topic}?", "category": "facts"}]})
    m = re.search(r"The answer is in document \[(\d+)\]", user)
    n = m.group(1) if m else "1"
    docs = dict(re.findall(r'<document id="(\d+)"[^\n]*>\n(.*?)\n</document>', user, re.DOTALL))
    text = docs.get(n, next(iter(docs.values()), "no documents"))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith(("#", "|", "```"))]
    sentence = lines[0] if lines else " ".join(text.split())[:200]
    return json.dumps({"reasoning": f"##begin_quote##{sentence}##end_quote## [{n}]", "answer": sentence[:60]})


class DelayServer:
    """The teacher stand-in. Run in its own process (``--serve``) so it never competes for our GIL."""

    def __init__(self, delay_s: float, port: int = 0):
        self.calls = 0
        self.lock = threading.Lock()
        outer = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out as separate writes

            def log_message(self, *a: Any) -> None:
                pass

            def do_GET(self) -> None:  # /calls: the counter, for the benchmark process
                data = json.dumps({"calls": outer.calls}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
                with outer.lock:
                    outer.calls += 1
                time.sleep(delay_s)
                content = _reply(body)
                data = json.dumps({
                    "id": "b", "object": "chat.completion", "created": 0, "model": "bench",
                    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
                    "usage": {"prompt_tokens": 500, "completion_tokens": 60, "total_tokens": 560},
                }).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), H)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class RemoteServer:
    """A DelayServer in a child process, with the same .url / .calls / .close()."""

    def __init__(self, delay_ms: float):
        import socket
        import subprocess

        import httpx

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port), "--delay-ms", str(delay_ms)])
        self.url = f"http://127.0.0.1:{port}/v1"
        self._http = httpx.Client(timeout=5)
        for _ in range(200):
            try:
                self._http.get(f"{self.url}/calls")
                return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("benchmark server did not start")

    @property
    def calls(self) -> int:
        return int(self._http.get(f"{self.url}/calls").json()["calls"])

    def close(self) -> None:
        self._http.close()
        self.proc.terminate()
        self.proc.wait(timeout=10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--delay-ms", type=float, default=200.0)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "generate.json"))
    ap.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve is not None:
        DelayServer(args.delay_ms / 1000, args.serve).httpd.serve_forever()
        return 0

    from builder.generate.engine import run_generate
    from rag.config import init_workspace, load_workspace
    from rag.ingest.pipeline import ingest
    from rag.retrieve import Retriever

    tmp = Path(tempfile.mkdtemp(prefix="raftsmith-bench-gen-"))
    srv = RemoteServer(args.delay_ms)
    try:
        ws = init_workspace(tmp / "ws", corpus_name="kestrel")
        shutil.rmtree(ws.root / "docs")
        shutil.copytree(REPO / "examples" / "kestrel" / "docs", ws.root / "docs")
        shutil.copy(REPO / "domain_questions" / "kestrel.yaml", ws.root / "domain_questions" / "kestrel.yaml")
        ingest(ws)
        ws = load_workspace(ws.config_path)
        tc = ws.config.teacher
        tc.provider, tc.base_url, tc.model = "openai-compatible", srv.url, "bench"
        tc.price_in_per_mtok, tc.price_out_per_mtok = 1.0, 2.0
        retriever = Retriever.from_workspace(ws)

        def clean(cache: bool) -> None:
            for f in ws.training_dir.glob("kestrel.*.jsonl"):
                f.unlink()
            if cache:
                for f in ws.state_dir.glob("teacher_cache.sqlite*"):
                    f.unlink()

        results: dict[str, Any] = {}
        for conc in (1, 16):
            clean(cache=True)
            before = srv.calls
            s = run_generate(ws, concurrency=conc, retriever=retriever, synthesize=1)
            results[f"concurrency_{conc}"] = {
                "rows": s.new_rows, "calls": srv.calls - before, "answer_s": s.answer_s, "dropped": s.dropped,
                "rows_per_s": round(s.new_rows / s.answer_s, 3) if s.answer_s else None, "elapsed_s": s.elapsed_s,
            }
            print(f"concurrency {conc:>2}: {s.new_rows} rows in {s.answer_s:.2f} s "
                  f"({results[f'concurrency_{conc}']['rows_per_s']} rows/s, {srv.calls - before} calls)")
        # rerun 1: the same command again (all rows on disk: resume skips them)
        before = srv.calls
        s = run_generate(ws, concurrency=16, retriever=retriever, synthesize=1)
        results["rerun_resume"] = {"calls": srv.calls - before, "new_rows": s.new_rows, "resumed_rows": s.resumed_rows}
        # rerun 2: outputs deleted, cache kept: every reply comes from SQLite
        clean(cache=False)
        before = srv.calls
        s = run_generate(ws, concurrency=16, retriever=retriever, synthesize=1)
        results["rerun_from_cache"] = {"calls": srv.calls - before, "new_rows": s.new_rows, "cache_hits": s.cache_hits,
                                       "answer_s": s.answer_s}
        retriever.close()
        speedup = results["concurrency_16"]["rows_per_s"] / results["concurrency_1"]["rows_per_s"]
        out = {
            "benchmark": "generate",
            "delay_ms_per_call": args.delay_ms,
            "corpus": "examples/kestrel: 50 question-file items + 1 synthesized question per chunk",
            **results,
            "speedup_16_vs_1": round(speedup, 2),
            "targets": {"speedup_16_vs_1": ">= 10", "rerun_calls": 0},
            "met": {"speedup": speedup >= 10, "rerun_zero_calls": results["rerun_resume"]["calls"] == 0
                    and results["rerun_from_cache"]["calls"] == 0},
            "machine": {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": __import__("os").cpu_count()},
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        print(f"speedup 16 vs 1: {speedup:.1f}x; rerun calls: {results['rerun_resume']['calls']} (resume), "
              f"{results['rerun_from_cache']['calls']} (from cache, {results['rerun_from_cache']['cache_hits']} hits)")
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.out}")
        return 0
    finally:
        srv.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
