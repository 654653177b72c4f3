"""Runtime benchmark: what RAG + audit cost on top of the model call.

For each question the full ``Answerer.answer`` path (retrieve, fence, budget, generate with
streaming, cite, audit) runs against a raw llama.cpp ``create_chat_completion`` call on the
SAME final messages (same model object, same max_tokens, temperature 0), alternating so load
drift hits both. Reported: overhead = (RAG total - raw total) / raw total (target <= 10 %),
its parts (retrieval, prompt building, audit), time to first token for both, and the audit
append cost per record (fsynced, with and without HMAC).

    python benchmarks/runtime.py [--workspace DIR] [--questions 10] [--max-tokens 48]

Writes benchmarks/results/runtime.json. The machine's load average is recorded: on a shared
box, absolute times move, the ratios much less.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _workspace(arg: str | None, tmp: Path) -> Path:
    from rag.config import init_workspace, load_workspace
    from rag.ingest.pipeline import ingest

    if arg:
        return Path(arg)
    ws = init_workspace(tmp / "ws", corpus_name="kestrel")
    shutil.rmtree(ws.root / "docs")
    shutil.copytree(REPO / "examples" / "kestrel" / "docs", ws.root / "docs")
    ingest(load_workspace(ws.config_path))
    return ws.root


def _questions(n: int) -> list[str]:
    import yaml

    data = yaml.safe_load((REPO / "domain_questions" / "kestrel.yaml").read_text())
    qs = [it["question"] for g in data["questions"] for it in g["items"]]
    return qs[:n]


def _stats(xs: list[float]) -> dict[str, float]:
    s = sorted(xs)
    return {"mean": round(statistics.fmean(s), 2), "p50": round(s[len(s) // 2], 2),
            "p95": round(s[min(len(s) - 1, round(0.95 * (len(s) - 1)))], 2), "n": len(s)}


def _raw_call(llm, msgs: list[dict[str, str]], max_tokens: int, stop: list[str]) -> tuple[float, float | None, str]:  # type: ignore[no-untyped-def]
    """One streamed llama.cpp chat call: (total ms, first-token ms, text)."""
    t0 = time.perf_counter()
    first = None
    pieces = []
    for part in llm.create_chat_completion(messages=msgs, max_tokens=max_tokens, temperature=0.0, seed=0,
                                           stop=stop or None, stream=True):
        piece = part["choices"][0]["delta"].get("content")
        if piece:
            if first is None:
                first = (time.perf_counter() - t0) * 1000
            pieces.append(piece)
    return (time.perf_counter() - t0) * 1000, first, "".join(pieces)


def bench_answers(root: Path, questions: list[str], max_tokens: int) -> dict:
    from rag.answer import Answerer, split_relevant
    from rag.config import load_workspace
    from rag.prompting import build_messages

    ws = load_workspace(root / "raftsmith.yaml")
    ws.config.chat.max_tokens = max_tokens
    engine = Answerer(ws)
    ref, be = engine.backend("base", "llama-cpp")
    llm = be._llm  # the same loaded model object the RAG path uses
    engine.answer(questions[0], model="base", backend="llama-cpp", on_token=lambda p: None)  # warm-up
    rows = []
    for i, q in enumerate(questions):
        # llama.cpp reuses the KV cache of the previous prompt's common prefix; reset before each
        # call so both paths evaluate the whole prompt, and alternate which one runs first.
        if i % 2 == 0:
            llm.reset()
            res = engine.answer(q, model="base", backend="llama-cpp", on_token=lambda p: None, event="benchmark")
            llm.reset()
            raw_ms, first, text = _raw_call(llm, build_messages(q, res.retrieved, []), max_tokens, be.default_stop)
        else:
            pre, _ = split_relevant(engine.retrieve(q), ws.config.chat.min_score)  # same chunks the RAG path will get
            llm.reset()
            raw_ms, first, text = _raw_call(llm, build_messages(q, pre, []), max_tokens, be.default_stop)
            llm.reset()
            res = engine.answer(q, model="base", backend="llama-cpp", on_token=lambda p: None, event="benchmark")
            if [c.chunk_id for c in pre] != [c.chunk_id for c in res.retrieved]:
                llm.reset()
                raw_ms, first, text = _raw_call(llm, build_messages(q, res.retrieved, []), max_tokens, be.default_stop)
        t = res.timings
        rows.append({"question": q, "rag_total_ms": res.latency_ms, "raw_total_ms": raw_ms,
                     "retrieve_ms": t.get("retrieve_ms", 0.0), "prompt_ms": t.get("prompt_ms", 0.0),
                     "audit_ms": t.get("audit_ms", 0.0), "generate_ms": t.get("generate_ms", 0.0),
                     "rag_ttft_ms": t.get("first_token_ms"), "raw_ttft_ms": first, "prompt_tokens": res.prompt_tokens,
                     "identical_output": text == res.raw, "refused": res.refused, "rag_first": i % 2 == 0})
    engine.close()
    done = [r for r in rows if not r["refused"]]
    rag_total = sum(r["rag_total_ms"] for r in done)
    raw_total = sum(r["raw_total_ms"] for r in done)
    overhead_parts = [r["retrieve_ms"] + r["prompt_ms"] + r["audit_ms"] for r in done]
    return {
        "model": ref.label, "max_tokens": max_tokens, "questions": len(done),
        "overhead_ratio": round((rag_total - raw_total) / raw_total, 4),
        "overhead_parts_ratio": round(sum(overhead_parts) / raw_total, 4),
        "rag_total_ms": _stats([r["rag_total_ms"] for r in done]), "raw_total_ms": _stats([r["raw_total_ms"] for r in done]),
        "retrieve_ms": _stats([r["retrieve_ms"] for r in done]), "prompt_ms": _stats([r["prompt_ms"] for r in done]),
        "audit_ms": _stats([r["audit_ms"] for r in done]),
        "rag_ttft_ms": _stats([r["rag_ttft_ms"] for r in done if r["rag_ttft_ms"] is not None]),
        # what the user waits for: question in -> first token out (retrieval + prompt + prefill)
        "rag_ttft_end_to_end_ms": _stats([r["retrieve_ms"] + r["prompt_ms"] + r["rag_ttft_ms"] for r in done
                                          if r["rag_ttft_ms"] is not None]),
        "raw_ttft_ms": _stats([r["raw_ttft_ms"] for r in done if r["raw_ttft_ms"] is not None]),
        "prompt_tokens": _stats([float(r["prompt_tokens"]) for r in done]),
        "identical_output": sum(r["identical_output"] for r in done), "rows": rows,
    }


def bench_audit(tmp: Path, n: int) -> dict:
    from rag.audit import AuditLog, verify

    out = {}
    for name, key in (("plain", None), ("hmac", b"benchmark-key")):
        log = AuditLog(tmp / f"audit-{name}.jsonl", hmac_key=key)
        times = []
        for i in range(n):
            t = time.perf_counter()
            log.append("query", query=f"question {i}", answer="answer " * 40, chunk_ids=[f"c{j}" for j in range(5)],
                       scores=[0.5] * 5, latency_ms=123.4)
            times.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        ok = verify(log.path, hmac_key=key).ok
        out[name] = {"append_ms": _stats(times), "verify_ms_total": round((time.perf_counter() - t) * 1000, 2),
                     "records": n, "verified": ok}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workspace", help="An indexed workspace (default: build the Kestrel sample in a temp dir).")
    ap.add_argument("--questions", type=int, default=10)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--audit-records", type=int, default=500)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "runtime.json"))
    args = ap.parse_args()
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        root = _workspace(args.workspace, tmp)
        answers = bench_answers(root, _questions(args.questions), args.max_tokens)
        audit = bench_audit(tmp, args.audit_records)
    result = {
        "benchmark": "runtime", "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
                    "threads": int(os.environ.get("RAFTSMITH_THREADS", "0")) or max(1, (os.cpu_count() or 2) // 2)},
        "target_overhead_ratio": 0.10, "answers": answers, "audit": audit,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    a = answers
    print(f"RAG overhead {a['overhead_ratio']:+.1%} (retrieval+prompt+audit = {a['overhead_parts_ratio']:.1%} of the raw call); "
          f"TTFT rag p50 {a['rag_ttft_ms']['p50']:.0f} ms vs raw {a['raw_ttft_ms']['p50']:.0f} ms; "
          f"audit append p50 {audit['plain']['append_ms']['p50']:.2f} ms (hmac {audit['hmac']['append_ms']['p50']:.2f} ms); "
          f"identical outputs {a['identical_output']}/{a['questions']}. -> {args.out}")


if __name__ == "__main__":
    main()
