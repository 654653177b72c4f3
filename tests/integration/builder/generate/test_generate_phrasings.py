"""The teacher's extra phrasings (raft.paraphrases, raft.reversals): through the scripted
loopback double (faults, resume, cache) and through a real llama_cpp.server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from generate_support import ScriptedTeacher, ensure_index, llama_server  # noqa: F401 - a fixture

pytestmark = pytest.mark.integration

ITEMS = """
questions:
  - category: Networking
    items:
      - {id: port, question: "Which TCP port does the Kestrel KX-7 relay listen on by default for sensor ingest?", answer: "7431"}
      - {id: admin, question: "On which TCP port is the Kestrel KX-7 admin console served?", answer: "9112",
         paraphrases: ["Which port number serves the KX-7 admin console?"]}
"""


def _set(cfg: Path, **sections: dict) -> None:
    data = yaml.safe_load(cfg.read_text())
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    cfg.write_text(yaml.safe_dump(data))


def _workspace(root: Path, paraphrases: int) -> Path:
    cfg = ensure_index(root, paraphrases=paraphrases, plain=False)
    for f in (root / "domain_questions").glob("*.yaml"):
        f.unlink()
    (root / "domain_questions" / "few.yaml").write_text(ITEMS)
    (root / "domain_questions" / "held.yaml").write_text(
        "holdout: true\nquestions:\n  - {id: port-h, paraphrase_of: port, "
        "question: 'Variant 2: Which TCP port does the Kestrel KX-7 relay listen on by default for sensor ingest?', answer: '7431'}\n")
    # the double's rewordings differ by a prefix only: keep them apart from the near-duplicate filter
    _set(cfg, raft={"n_distractors": 1, "p_oracle": 1.0, "eval_split": "none", "dedup_threshold": 0.9999})
    return cfg


def _rows(root: Path) -> list[dict]:
    p = root / "training_data" / "kestrel.train.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()]


def test_teacher_phrasings_and_reversals_become_rows(sample_workspace: Path) -> None:
    from builder.generate.engine import run_generate
    from rag.config import load_workspace

    cfg = _workspace(sample_workspace, paraphrases=3)
    with ScriptedTeacher() as srv:
        _set(cfg, teacher={"provider": "openai-compatible", "base_url": srv.base_url, "model": "scripted", "concurrency": 2})
        # the first phrasing reply is not JSON: retried with the error named, then fine
        srv.script(("text", "sure! here are some"))
        s = run_generate(load_workspace(cfg))
        phrasing_calls = [r for r in srv.requests if '"paraphrases"' in r["body"]["messages"][1]["content"]]
        # one request per item in its own wording (the file's paraphrase is not rephrased), plus the retry
        assert len(phrasing_calls) == 3
        assert s.teacher_phrasings == 5 and s.teacher_reversals == 2
        assert s.dropped.get("phrasing_is_held_out") == 1  # "Variant 2" of port equals the held-out question
        rows = _rows(sample_workspace)
        ids = {r["meta"]["id"] for r in rows}
        assert sum("~t" in i and not i.endswith("#closed") for i in ids) == 5
        rev = [r for r in rows if "~r" in r["meta"]["id"] and not r["meta"].get("closed_book")]
        assert len(rev) == 2 and all(r["meta"]["reference_answer"] != "7431" for r in rev)
        assert any(r["meta"].get("closed_book") and "~r" in r["meta"]["id"] for r in rows)  # reversals closed book too
        questions = [r["meta"]["question"] for r in rows]
        assert not any(q.startswith("Variant 2: Which TCP port") for q in questions)
        calls = srv.calls
        # resume: every reply comes from the cache, nothing is asked twice
        s2 = run_generate(load_workspace(cfg))
        assert srv.calls == calls and s2.calls == 0 and s2.new_rows == 0


def test_phrasings_off_makes_no_call(sample_workspace: Path) -> None:
    from builder.generate.engine import run_generate
    from rag.config import load_workspace

    cfg = _workspace(sample_workspace, paraphrases=0)
    with ScriptedTeacher() as srv:
        _set(cfg, teacher={"provider": "openai-compatible", "base_url": srv.base_url, "model": "scripted"})
        s = run_generate(load_workspace(cfg))
        assert not any('"paraphrases"' in r["body"]["messages"][1]["content"] for r in srv.requests)
        assert s.teacher_phrasings == 0


def test_phrasings_through_a_real_llama_cpp_server(sample_workspace: Path, llama_server: str) -> None:  # noqa: F811
    from builder.generate.engine import run_generate
    from rag.config import load_workspace

    cfg = _workspace(sample_workspace, paraphrases=2)
    _set(cfg, teacher={"provider": "openai-compatible", "base_url": llama_server, "model": "smollm2", "max_tokens": 200,
                       "concurrency": 2, "max_retries": 1, "temperature": 0.0, "local_only": True},
         raft={"reversals": False})
    s = run_generate(load_workspace(cfg), quality_retries=0)
    # the schema-constrained request went through the real server; whatever SmolLM2 wrote was
    # validated, deduplicated and counted, never taken blindly
    assert s.calls >= 2
    made = s.teacher_phrasings
    rejected = sum(v for k, v in s.dropped.items() if k.startswith("phrasing_"))
    assert made + rejected >= 1 or s.dropped.get("invalid_json", 0) >= 1, s.dropped
    s2 = run_generate(load_workspace(cfg), quality_retries=0)
    assert s2.calls == 0


TINY_DOC = """# Heron gateway

## Ports

The Heron gateway listens on TCP port 6620 for telemetry. Its admin page is on port 6621.

## Maintenance

Replace the Heron air filter every 90 days. The battery lasts 7 years.
"""


def test_fact_synthesis_through_a_real_llama_cpp_server(tmp_path: Path, llama_server: str) -> None:  # noqa: F811
    """One schema-constrained call per chunk to the real server; what SmolLM2 writes is checked
    against its chunk and counted per fact; a rerun repeats no call."""
    from builder.generate.engine import run_generate
    from rag.config import init_workspace, load_workspace
    from rag.ingest.pipeline import ingest

    ws = init_workspace(tmp_path / "ws", corpus_name="heron")
    for f in (ws.root / "docs").iterdir():
        f.unlink()
    (ws.root / "docs" / "heron.md").write_text(TINY_DOC)
    for f in (ws.root / "domain_questions").glob("*.yaml"):
        f.unlink()
    ingest(ws)
    _set(ws.config_path, teacher={"provider": "openai-compatible", "base_url": llama_server, "model": "smollm2",
                                  "max_tokens": 300, "concurrency": 2, "max_retries": 1, "temperature": 0.0,
                                  "local_only": True},
         raft={"synthesize_max_facts": 3, "paraphrases": 0})
    s = run_generate(load_workspace(ws.config_path), synthesize=2, quality_retries=0)
    cov = s.synth_coverage
    assert cov["chunks"] >= 2 and s.calls >= cov["chunks"]  # one synthesis call per chunk, then the answers
    assert cov["chunks_with_facts"] + cov["chunks_without_facts"] == cov["chunks"]
    kept = cov["facts"]
    rejected = sum(v for k, v in s.dropped.items() if k.startswith("synth_"))
    # whatever SmolLM2 wrote went through the checks: kept as facts of its chunk, or counted
    assert kept + rejected + cov["teacher_failed"] + s.dropped.get("invalid_json", 0) >= 1, (cov, s.dropped)
    again = run_generate(load_workspace(ws.config_path), synthesize=2, quality_retries=0)
    assert again.calls == 0 and again.synth_coverage["facts"] == kept
