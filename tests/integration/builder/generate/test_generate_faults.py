"""The teacher client against a scripted fault-injecting loopback server (real openai SDK, real HTTP).

Every fault the issue names: 429 + Retry-After, 500/503, 401, 402, timeouts, malformed JSON,
a connection dropped mid-body; then the whole engine against random faults (nothing lost),
the rerun (zero calls), and SIGKILL at random points followed by resume (no duplicates, no gaps).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from generate_support import ScriptedTeacher, ensure_index

from builder.generate.teacher import OpenAITeacher, TeacherCache
from rag.config import TeacherConfig
from rag.errors import TeacherError

pytestmark = pytest.mark.integration

SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
MSGS = [{"role": "system", "content": "Reply with JSON."}, {"role": "user", "content": "Question: what port? The answer is in document [1]."}]


def _teacher(srv: ScriptedTeacher, delays: list[float], **kw: object) -> OpenAITeacher:
    async def record_sleep(d: float) -> None:
        delays.append(d)

    runtime = {k: kw.pop(k) for k in ("cache", "backoff_base") if k in kw}
    settings: dict[str, object] = {"provider": "openai-compatible", "model": "scripted", "structured": "json_object",
                                   "max_retries": 3, "timeout_s": 5.0, **kw}
    return OpenAITeacher(TeacherConfig.model_validate(settings), base_url=srv.base_url, api_key="no-key-needed",
                         sleep=record_sleep, **runtime)  # type: ignore[arg-type]


def _ask(t: OpenAITeacher, attempt: int = 0) -> dict:
    async def go() -> dict:
        try:
            r = await t.complete_json(MSGS, SCHEMA, prompt_version="t1", max_tokens=50, attempt=attempt, tag="q1")
            return r.data
        finally:
            await t.aclose()

    return asyncio.run(go())


def test_429_honors_retry_after_then_succeeds() -> None:
    with ScriptedTeacher() as srv:
        srv.script(("status", 429, {"Retry-After": "3"}), ("text", '{"answer": "7431"}'))
        delays: list[float] = []
        t = _teacher(srv, delays)
        assert _ask(t) == {"answer": "7431"}
        assert srv.calls == 2 and delays == [3.0]
        assert t.stats.retries == 1 and t.stats.failures == {"rate_limited": 1}


@pytest.mark.parametrize("code", [500, 503])
def test_5xx_backs_off_with_bounded_jitter(code: int) -> None:
    with ScriptedTeacher() as srv:
        srv.script(("status", code), ("status", code), ("text", '{"answer": "ok"}'))
        delays: list[float] = []
        t = _teacher(srv, delays, backoff_base=0.5)
        assert _ask(t) == {"answer": "ok"}
        assert srv.calls == 3 and len(delays) == 2
        assert 0 <= delays[0] <= 0.5 and 0 <= delays[1] <= 1.0  # full jitter within the exponential cap


def test_5xx_forever_gives_up_after_max_retries() -> None:
    with ScriptedTeacher() as srv:
        srv.script(*[("status", 503)] * 10)
        delays: list[float] = []
        t = _teacher(srv, delays, max_retries=2)
        with pytest.raises(TeacherError) as exc:
            _ask(t)
        assert srv.calls == 3 and len(delays) == 2
        assert exc.value.fatal is False and "resumes" in str(exc.value)


@pytest.mark.parametrize(("code", "words"), [(401, "keys set"), (402, "out of credits"), (403, "refused"), (400, "invalid")])
def test_client_errors_are_not_retried(code: int, words: str) -> None:
    with ScriptedTeacher() as srv:
        srv.script(("status", code))
        delays: list[float] = []
        t = _teacher(srv, delays)
        with pytest.raises(TeacherError) as exc:
            _ask(t)
        assert srv.calls == 1 and delays == []
        assert words in str(exc.value) and exc.value.fatal is True


def test_timeout_is_retried() -> None:
    with ScriptedTeacher() as srv:
        srv.script(("sleep", 2.0), ("text", '{"answer": "late"}'))
        delays: list[float] = []
        t = _teacher(srv, delays, timeout_s=0.5)
        assert _ask(t) == {"answer": "late"}
        assert t.stats.failures.get("timeout") == 1 and srv.calls == 2


def test_malformed_body_and_midstream_drop_are_retried() -> None:
    with ScriptedTeacher() as srv:
        srv.script(("malformed",), ("midstream",), ("text", '{"answer": "whole"}'))
        delays: list[float] = []
        t = _teacher(srv, delays)
        assert _ask(t) == {"answer": "whole"}
        assert srv.calls == 3 and len(delays) == 2
        assert sum(t.stats.failures.values()) == 2


def test_fenced_json_is_extracted_and_invalid_replies_retried() -> None:
    with ScriptedTeacher() as srv:
        srv.script(("text", "sure! here you go"), ("text", 'Here:\n```json\n{"answer": "9112"}\n```'))
        delays: list[float] = []
        t = _teacher(srv, delays)
        assert _ask(t) == {"answer": "9112"}
        assert t.stats.failures == {"invalid_json": 1} and srv.calls == 2


def test_structured_output_style_is_sent_per_provider() -> None:
    with ScriptedTeacher() as srv:
        srv.script(("text", '{"answer": "a"}'), ("text", '{"answer": "b"}'), ("text", '{"answer": "c"}'))
        for style in ("json_object", "json_schema", "ollama"):
            _ask(_teacher(srv, [], structured=style))
        bodies = [r["body"] for r in srv.requests]
        assert bodies[0]["response_format"] == {"type": "json_object", "schema": SCHEMA}
        assert bodies[1]["response_format"]["type"] == "json_schema"
        assert bodies[1]["response_format"]["json_schema"]["schema"] == SCHEMA
        assert bodies[2]["format"] == SCHEMA


def test_cache_makes_a_rerun_free(tmp_path: Path) -> None:
    with ScriptedTeacher() as srv:
        first = _ask(_teacher(srv, [], cache=TeacherCache(tmp_path / "c.sqlite")))
        again = _teacher(srv, [], cache=TeacherCache(tmp_path / "c.sqlite"))
        assert _ask(again) == first
        assert srv.calls == 1 and again.stats.cache_hits == 1 and again.stats.calls == 0


# ---------------------------------------------------------------- the whole engine


def _ws(sample_workspace: Path, port_url: str, extra: str = "") -> Path:
    import yaml

    cfg = ensure_index(sample_workspace)

    data = yaml.safe_load(cfg.read_text())
    data["teacher"].update({"provider": "openai-compatible", "base_url": port_url, "model": "scripted", "max_retries": 4,
                            "concurrency": 4, "price_in_per_mtok": 1.0, "price_out_per_mtok": 2.0})
    data["raft"].update({"n_distractors": 2})
    cfg.write_text(yaml.safe_dump(data))
    return cfg


def _all_rows(ws_root: Path) -> list[dict]:
    rows = []
    for f in sorted((ws_root / "training_data").glob("kestrel.*.jsonl")):
        rows.extend(json.loads(line) for line in f.read_text().splitlines() if line.strip())
    return rows


def test_engine_survives_random_faults_and_rerun_is_free(sample_workspace: Path) -> None:
    from builder.generate.engine import run_generate
    from rag.config import load_workspace

    with ScriptedTeacher() as srv:
        cfg = _ws(sample_workspace, srv.base_url)
        rng = random.Random(7)
        faults = [("status", 503), ("status", 429, {"Retry-After": "0"}), ("malformed",), ("midstream",), ("status", 500)]
        srv.script(*[rng.choice(faults) if rng.random() < 0.3 else ("ok",) for _ in range(40)])
        ws = load_workspace(cfg)
        from rag.retrieve import Retriever

        retriever = Retriever.from_workspace(ws)  # loaded once for the three runs
        s = run_generate(ws, limit=12, retriever=retriever)
        rows = _all_rows(sample_workspace)
        assert not s.dropped.get("no_quotes") and not s.dropped.get("unverified_quote"), s.dropped
        ids = [r["meta"]["id"] for r in rows]
        assert len(ids) == len(set(ids)) == 12 == s.train_rows + s.eval_rows
        assert s.retries > 0 and s.calls == srv.calls
        assert all(r["meta"]["quotes_verified"] for r in rows)
        assert s.cost_usd > 0 and s.prompt_tokens > 0
        # the payload log holds one hash per request that was answered
        log_lines = (sample_workspace / ".raftsmith" / "teacher_payloads.jsonl").read_text().splitlines()
        assert len(log_lines) == s.payloads_sent == 12
        before = srv.calls
        s2 = run_generate(load_workspace(cfg), limit=12, retriever=retriever)
        assert srv.calls == before and s2.calls == 0 and s2.new_rows == 0 and s2.resumed_rows == 12
        # after deleting the data, the cache alone rebuilds it without a call
        for f in (sample_workspace / "training_data").glob("kestrel.*.jsonl"):
            f.unlink()
        s3 = run_generate(load_workspace(cfg), limit=12, retriever=retriever)
        retriever.close()
        assert srv.calls == before and s3.cache_hits == 12 and s3.new_rows == 12
        assert sorted(r["meta"]["id"] for r in _all_rows(sample_workspace)) == sorted(ids)


def test_max_cost_stops_cleanly_and_keeps_rows(sample_workspace: Path) -> None:
    from builder.generate.engine import run_generate
    from rag.config import load_workspace

    with ScriptedTeacher() as srv:
        cfg = _ws(sample_workspace, srv.base_url)
        ws = load_workspace(cfg)
        ws.config.teacher.concurrency = 1
        ws.config.teacher.max_cost_usd = 0.0025  # roughly two calls at $1/$2 per Mtok
        s = run_generate(ws, limit=10, concurrency=1)
        assert s.stopped and "max_cost_usd" in s.stopped
        assert 0 < s.new_rows < 10 and s.dropped.get("not_started_budget", 0) == 10 - s.new_rows
        assert len(_all_rows(sample_workspace)) == s.new_rows


def test_dry_run_estimates_and_calls_nothing(sample_workspace: Path) -> None:
    from builder.generate.engine import run_generate
    from rag.config import load_workspace

    with ScriptedTeacher() as srv:
        cfg = _ws(sample_workspace, srv.base_url)
        s = run_generate(load_workspace(cfg), dry_run=True, synthesize=2)
        assert srv.calls == 0 and s.dry_run
        assert s.estimated_prompt_tokens > 1000 and s.estimated_cost_usd > 0
        # raft.no_oracle: refuse -> the oracle-less training rows are refusals: no call to estimate
        ws = load_workspace(cfg)
        ws.config.raft.no_oracle = "refuse"
        s2 = run_generate(ws, dry_run=True, synthesize=2)
        assert srv.calls == 0 and s2.planned == s.planned and s2.estimated_rows < s.estimated_rows
        assert not list((sample_workspace / "training_data").glob("kestrel.*.jsonl"))


GEN_SCRIPT = r"""
import sys
from rag.config import load_workspace
from builder.generate.engine import run_generate
s = run_generate(load_workspace(sys.argv[1]), limit=int(sys.argv[2]), concurrency=3)
print("DONE", s.new_rows)
"""


def test_sigkill_at_random_points_then_resume(sample_workspace: Path) -> None:
    n = 16
    with ScriptedTeacher(delay_s=0.15) as srv:
        cfg = _ws(sample_workspace, srv.base_url)
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[4])}
        rng = random.Random(11)
        kills = 0
        for _ in range(2):
            before = len(_all_rows(sample_workspace))
            if before >= n:
                break
            p = subprocess.Popen([sys.executable, "-c", GEN_SCRIPT, str(cfg), str(n)], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            # wait until this run has written at least one row, then kill at a random moment
            t0 = time.monotonic()
            while len(_all_rows(sample_workspace)) <= before and p.poll() is None and time.monotonic() - t0 < 120:
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 0.4))
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                kills += 1
            p.wait(timeout=30)
        assert kills >= 1
        # simulate the worst tear: half a row at the end of the train file
        train = sample_workspace / "training_data" / "kestrel.train.jsonl"
        with open(train, "a") as f:
            f.write('{"messages": [{"role": "sys')
        out = subprocess.run([sys.executable, "-c", GEN_SCRIPT, str(cfg), str(n)], env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stdout + out.stderr
        rows = _all_rows(sample_workspace)
        ids = [r["meta"]["id"] for r in rows]
        assert len(ids) == len(set(ids)) == n, "duplicates or gaps after resume"
        from builder.generate.engine import run_generate
        from rag.config import load_workspace

        s = run_generate(load_workspace(cfg), limit=n, dry_run=True)
        assert s.planned == n


def test_synthesized_questions_mix_with_question_files(sample_workspace: Path) -> None:
    from builder.generate.engine import run_generate
    from rag.config import load_workspace

    with ScriptedTeacher() as srv:
        cfg = _ws(sample_workspace, srv.base_url)
        s = run_generate(load_workspace(cfg), synthesize=1, concurrency=8)
        rows = _all_rows(sample_workspace)
        synth = [r for r in rows if r["meta"]["id"].startswith("s-")]
        yaml_rows = [r for r in rows if not r["meta"]["id"].startswith("s-")]
        assert synth and len(yaml_rows) == 56  # 50 answerable + 6 refusal rows
        # a synthesized question's oracle is the chunk it came from
        synth_requests = [r for r in srv.requests if r["body"]["messages"][0]["content"].startswith("You write questions")]
        # refusal rows have a fixed reply: no teacher call for them
        assert s.refusal_rows == 6 and len(synth_requests) == s.calls - (len(rows) - s.refusal_rows)
        for r in synth[:10]:
            heading = r["meta"]["question"].split("about ", 1)[1].split(" (fact")[0]
            oracle_id = r["meta"]["oracle_chunk_ids"][0]
            assert r["meta"]["source_sha256"][oracle_id]
            assert any(f"section '{heading}'" in q["body"]["messages"][1]["content"] for q in synth_requests)
        assert s.dropped.get("near_duplicate", 0) >= 0 and len({r["meta"]["id"] for r in rows}) == len(rows)
        # coverage, per fact: every chunk was asked for its facts; the double gives two facts per
        # chunk with two usable lines, fewer for shorter chunks, and the report counts them
        cov = s.synth_coverage
        assert cov["chunks"] == len(synth_requests) > 10 and cov["teacher_failed"] == 0
        assert cov["chunks_with_facts"] + cov["chunks_without_facts"] == cov["chunks"]
        assert 0 < cov["facts"] <= 2 * cov["chunks"] and cov["facts_per_chunk"]["max"] == 2
        assert len(cov["chunks_without_facts_sample"]) == min(20, cov["chunks_without_facts"])
        # each synthesized fact carries its short answer, which its chunk holds
        for r in synth[:10]:
            assert r["meta"]["answer"] and r["meta"]["oracle_chunk_ids"]


def test_redaction_before_sending_and_restore_after(sample_workspace: Path) -> None:
    from builder.generate.engine import run_generate
    from rag.config import load_workspace

    with ScriptedTeacher() as srv:
        cfg = _ws(sample_workspace, srv.base_url)
        ws = load_workspace(cfg)
        ws.config.teacher.redact = True
        ws.config.teacher.deny_list = ["Kestrel", "Orvane"]
        s = run_generate(ws, limit=8)
        sent = json.dumps([r["body"] for r in srv.requests])
        assert "Kestrel" not in sent and "Orvane" not in sent and "10.74.0.7" not in sent
        assert "[DENY_1]" in sent
        assert s.redactions.get("deny", 0) >= 8 and s.payloads_sent == len(srv.requests)
        rows = _all_rows(sample_workspace)
        assert len(rows) == 8 and all(r["meta"]["quotes_verified"] for r in rows)
        text = json.dumps(rows)
        assert "[DENY_" not in text and "Kestrel" in text  # placeholders restored in the local data
        log = [json.loads(x) for x in (sample_workspace / ".raftsmith" / "teacher_payloads.jsonl").read_text().splitlines()]
        assert len(log) == len(srv.requests) and all(e["redactions"].get("deny") for e in log)


def test_invented_quotes_are_regenerated_then_dropped(sample_workspace: Path) -> None:
    from builder.generate.engine import run_generate
    from rag.config import load_workspace

    bad = json.dumps({"reasoning": "It says ##begin_quote##The relay is painted purple.##end_quote## [1].", "answer": "purple"})
    none = json.dumps({"reasoning": "I just know it.", "answer": "7431"})
    with ScriptedTeacher() as srv:
        cfg = _ws(sample_workspace, srv.base_url)
        srv.script(("text", bad))  # first try invents a quote, the regeneration is faithful
        s = run_generate(load_workspace(cfg), limit=1, concurrency=1)
        assert s.new_rows == 1 and srv.calls == 2 and not s.dropped.get("unverified_quote")
        for f in (sample_workspace / "training_data").glob("kestrel.*.jsonl"):
            f.unlink()
        ws = load_workspace(cfg)
        ws.config.raft.seed = 5  # fresh contexts: no cache hits
        srv.script(("text", bad), ("text", none), ("text", bad))
        s = run_generate(ws, limit=1, concurrency=1)
        assert s.new_rows == 0 and s.dropped.get("unverified_quote") == 1 and s.calls == 3
        assert _all_rows(sample_workspace) == []
