"""generate end to end on the sample corpus: --teacher none, a real llama_cpp.server teacher, secrets.

(a) reference answers -> rows that datasets loads and SmolLM2's chat template renders;
(b) the real openai client against a real `python -m llama_cpp.server` serving SmolLM2 with
    structured output (the tiny model's answers are weak: bad rows must be caught and counted);
(e) a canary API key never reaches logs, data, cache, payload log or exception text.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from generate_support import ScriptedTeacher, ensure_index, llama_server  # noqa: F401 - a fixture

from rag.errors import ConfigError, TeacherError
from rag.prompting import REFUSAL_REPLY

pytestmark = pytest.mark.integration


def _rows(ws_root: Path, split: str) -> list[dict]:
    p = ws_root / "training_data" / f"kestrel.{split}.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()] if p.exists() else []


def _set(cfg: Path, **sections: dict) -> None:
    data = yaml.safe_load(cfg.read_text())
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    cfg.write_text(yaml.safe_dump(data))


def test_teacher_none_rows_load_and_render(sample_workspace: Path, smollm2_gguf: Path) -> None:
    from rag.cli.main import cli

    cfg = ensure_index(sample_workspace)
    runner = CliRunner()
    r = runner.invoke(cli, ["generate", "--teacher", "none", "--json", "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output.strip().splitlines()[-1])
    train, ev = _rows(sample_workspace, "train"), _rows(sample_workspace, "eval")
    assert summary["train_rows"] == len(train) > 20 and summary["eval_rows"] == len(ev) > 0
    # the held-out file (paraphrases and its unanswerables) never becomes a row
    assert summary["dropped"]["held_out"] == 25 and "unanswerable" not in summary["dropped"]
    heldout = yaml.safe_load((sample_workspace / "domain_questions" / "kestrel-heldout.yaml").read_text())
    heldout_ids = {i["id"] for g in heldout["questions"] for i in g["items"]}
    ids = [x["meta"]["id"] for x in train + ev]
    assert len(ids) == len(set(ids)) and not heldout_ids & set(ids)
    # the training row contract (docs/architecture.md)
    for row in train + ev:
        m = row["meta"]
        assert [t["role"] for t in row["messages"]] == ["system", "user", "assistant"]
        assert {"id", "question", "answer", "oracle_chunk_ids", "distractor_chunk_ids", "has_oracle", "quotes_verified",
                "teacher", "source_sha256", "split"} <= set(m)
        assert m["teacher"]["provider"] == "none"
        assert row["messages"][2]["content"].endswith(f"<ANSWER>: {m['answer']}")
        if m.get("refusal"):
            continue
        assert m["question"] in row["messages"][1]["content"]
        if m["quotes_verified"]:
            assert m["has_oracle"] and "##begin_quote##" in row["messages"][2]["content"]
    # unanswerable training questions: refusal rows over the chunks retrieval brings for them
    refusals = [x for x in train + ev if x["meta"].get("refusal")]
    assert summary["refusal_rows"] == len(refusals) == 6 and all(x["meta"]["split"] == "train" for x in refusals)
    for x in refusals:
        assert x["messages"][2]["content"] == REFUSAL_REPLY and x["meta"]["reference_answer"] is None
        assert not x["meta"]["has_oracle"] and not x["meta"]["oracle_chunk_ids"]
        assert len(x["meta"]["distractor_chunk_ids"]) == 5  # n_distractors + 1 documents, like the other rows
        assert x["messages"][1]["content"].count("<document id=") == 5
    with_oracle = [x for x in train + ev if x["meta"]["has_oracle"]]
    assert sum(x["meta"]["quotes_verified"] for x in with_oracle) >= 0.9 * len(with_oracle)
    # chunk-disjoint split
    tr_chunks = {c for x in train for c in x["meta"]["oracle_chunk_ids"]}
    assert not tr_chunks & {c for x in ev for c in x["meta"]["oracle_chunk_ids"]}
    assert summary["decontamination"]["shared_oracle_chunks"] == 0

    import datasets
    from transformers import AutoTokenizer

    ds = datasets.load_dataset("json", data_files={"train": str(sample_workspace / "training_data" / "kestrel.train.jsonl")})["train"]
    assert len(ds) == len(train) and ds[0]["messages"] == train[0]["messages"]
    tok = AutoTokenizer.from_pretrained(str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name)
    text = tok.apply_chat_template(ds[0]["messages"], tokenize=False)
    assert text.count("<|im_start|>") == 3 and text.rstrip().endswith("<|im_end|>")
    assert train[0]["messages"][2]["content"] in text

    # rerun: nothing new, byte-identical files
    before = (sample_workspace / "training_data" / "kestrel.train.jsonl").read_bytes()
    r2 = runner.invoke(cli, ["generate", "--teacher", "none", "--json", "--config", str(cfg)])
    s2 = json.loads(r2.output.strip().splitlines()[-1])
    assert s2["new_rows"] == 0 and s2["resumed_rows"] == len(ids)
    assert (sample_workspace / "training_data" / "kestrel.train.jsonl").read_bytes() == before

    # a question held out after its row was made: the row leaves the data on the next run
    qfile = sample_workspace / "domain_questions" / "kestrel.yaml"
    qdata = yaml.safe_load(qfile.read_text())
    item = next(i for g in qdata["questions"] for i in g["items"] if i["id"] == train[0]["meta"]["id"])
    item["paraphrase_of"] = "kept-for-evaluation"
    qfile.write_text(yaml.safe_dump(qdata, sort_keys=False))
    r3 = runner.invoke(cli, ["generate", "--teacher", "none", "--json", "--config", str(cfg)])
    s3 = json.loads(r3.output.strip().splitlines()[-1])
    assert s3["dropped"]["held_out_removed"] == 1 and s3["new_rows"] == 0
    after = _rows(sample_workspace, "train")
    assert [x["meta"]["id"] for x in after] == [x["meta"]["id"] for x in train[1:]]


def test_no_oracle_refuse_turns_oracle_less_rows_into_refusals(sample_workspace: Path) -> None:
    """raft.no_oracle: refuse -> the (1 - p_oracle) training rows teach the refusal, not a guess."""
    from rag.cli.main import cli

    cfg = ensure_index(sample_workspace)
    _set(cfg, raft={"no_oracle": "refuse", "p_oracle": 0.6})
    r = CliRunner().invoke(cli, ["generate", "--teacher", "none", "--json", "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output.strip().splitlines()[-1])
    train, ev = _rows(sample_workspace, "train"), _rows(sample_workspace, "eval")
    absent = [x for x in train if x["meta"]["reference_answer"] is not None and not x["meta"]["has_oracle"]]
    assert len(absent) >= 5  # p_oracle 0.6 over ~45 answerable rows
    for x in absent:
        assert x["messages"][2]["content"] == REFUSAL_REPLY and x["meta"]["refusal"]
        assert x["meta"]["refusal_reason"] == "oracle_absent" and x["meta"]["oracle_chunk_ids"]
    # rows that hold their oracle still answer; unanswerable items are refusals as before
    answered = [x for x in train if x["meta"]["has_oracle"]]
    assert answered and all(x["messages"][2]["content"].endswith(x["meta"]["answer"]) for x in answered)
    assert all(not x["meta"].get("refusal") for x in answered)
    assert summary["refusal_rows"] == len(absent) + 6
    # the eval split keeps its RAFT rows: refusing there would hide what the model knows
    assert all(not x["meta"].get("refusal") for x in ev)


def test_real_llama_cpp_server_teacher(sample_workspace: Path, llama_server: str) -> None:  # noqa: F811
    from builder.generate.engine import run_generate
    from rag.config import load_workspace

    cfg = ensure_index(sample_workspace)
    _set(cfg, teacher={"provider": "openai-compatible", "base_url": llama_server, "model": "smollm2", "max_tokens": 160,
                       "concurrency": 2, "max_retries": 1, "temperature": 0.0, "local_only": True,
                       "price_in_per_mtok": 0.0, "price_out_per_mtok": 0.0},
         raft={"n_distractors": 1, "p_oracle": 1.0})
    s = run_generate(load_workspace(cfg), limit=2, quality_retries=0)
    # the structured-output request went through the real server and came back schema-valid
    assert s.calls >= 2 and s.prompt_tokens > 100 and s.completion_tokens > 0
    assert s.payloads_sent == s.calls
    quality = {k: v for k, v in s.dropped.items() if k in ("no_quotes", "unverified_quote", "empty_answer", "invalid_json")}
    # every item is accounted for: a row with verified quotes, or a counted drop
    assert s.new_rows + sum(quality.values()) == 2, s.dropped
    rows = _rows(sample_workspace, "train") + _rows(sample_workspace, "eval")
    assert len(rows) == s.new_rows and all(r["meta"]["quotes_verified"] for r in rows)
    assert all(r["meta"]["teacher"] == {"provider": "openai-compatible", "model": "smollm2", "prompt_version": "raft-v1+answer-v1"} for r in rows)
    # the rerun is served from the cache: zero calls
    s2 = run_generate(load_workspace(cfg), limit=2, quality_retries=0)
    assert s2.calls == 0 and s2.cache_hits >= 2 - s2.resumed_rows


def test_local_only_refuses_public_teachers(tmp_path: Path) -> None:
    from builder.generate.teacher import make_teacher
    from rag.config import init_workspace

    ws = init_workspace(tmp_path / "w")
    for provider in ("openrouter", "openai"):
        with pytest.raises(ConfigError, match="local-only"):
            make_teacher(ws, provider, local_only=True)
    with pytest.raises(ConfigError, match="base URL"):
        make_teacher(ws, "openai-compatible")
    t = make_teacher(ws, "ollama", local_only=True)
    assert t.base_url == "http://127.0.0.1:11434/v1" and t.structured == "ollama"


CANARY = "sk-canary-7f3a9c1e5b2d4a6f8e0c1b3d5f7a9e2c"


def test_canary_key_never_leaks(sample_workspace: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from builder.generate.engine import run_generate
    from rag.config import load_workspace

    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    caplog.set_level(logging.DEBUG)
    for name in ("openai", "httpx", "httpcore", "builder", "rag"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    with ScriptedTeacher() as srv:
        cfg = ensure_index(sample_workspace)
        _set(cfg, teacher={"provider": "openai-compatible", "base_url": srv.base_url, "model": "scripted", "concurrency": 2})
        srv.script(("status", 503), ("ok",), ("malformed",))
        s = run_generate(load_workspace(cfg), limit=4)
        assert s.new_rows == 4
        # the key really was sent (so the checks below can fail)
        assert {k.lower(): v for k, v in srv.requests[0]["headers"].items()}["authorization"] == f"Bearer {CANARY}"
        srv.script(("status", 401))
        for f in (sample_workspace / "training_data").glob("*.jsonl"):
            f.unlink()
        ws = load_workspace(cfg)
        ws.config.raft.seed = 1  # new contexts: cache misses, so the 401 is met
        with pytest.raises(TeacherError) as exc:
            run_generate(ws, limit=4)
    assert CANARY not in str(exc.value) and CANARY not in repr(exc.value)
    assert "401" in str(exc.value)
    assert caplog.records, "debug logging was captured"
    assert CANARY not in caplog.text
    assert all(CANARY not in str(r.args) for r in caplog.records)
    for f in sample_workspace.rglob("*"):
        if f.is_file():
            assert CANARY.encode() not in f.read_bytes(), f
