"""ask and chat on the real llama.cpp backend (packaged SmolLM2) over the indexed Kestrel corpus."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from _runtime_ws import add_fixture_export, make_workspace
from click.testing import CliRunner

from rag.cli.main import cli

pytestmark = pytest.mark.integration

PORT_Q = "Which TCP port does the Kestrel KX-7 relay listen on by default for sensor ingest?"


@pytest.fixture(scope="module")
def ws_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rag.packaged import smollm2_gguf

    root = make_workspace(tmp_path_factory.mktemp("ask") / "ws")
    add_fixture_export(root, smollm2_gguf())
    return root


def _run(root: Path, *args: str, input: str | None = None, config: str = "raftsmith.yaml"):  # type: ignore[no-untyped-def]
    res = CliRunner().invoke(cli, [*args, "--config", str(root / config)], input=input)
    return res


def _audit(root: Path) -> list[dict]:
    log = root / ".raftsmith" / "audit.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_ask_json_with_citations_contract(ws_root: Path) -> None:
    res = _run(ws_root, "ask", PORT_Q, "--model", "base", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert set(out) >= {"answer", "model", "backend", "citations", "latency_ms"}
    assert out["backend"] == "llama-cpp" and out["model"].startswith("base (")
    assert out["answer"].strip() and out["latency_ms"] > 0
    assert out["retrieved"] and out["retrieved"][0]["source"] == "docs/networking.md"
    assert any("7431" in c["text"] for c in out["retrieved"])
    retrieved_ids = {c["chunk_id"] for c in out["retrieved"]}
    for c in out["citations"]:  # whatever the tiny model cites must be a retrieved chunk
        assert c["chunk_id"] in retrieved_ids and {"source", "start_line", "end_line"} <= set(c)
    rec = _audit(ws_root)[-1]
    assert rec["event"] == "query" and rec["query"] == PORT_Q and rec["outcome"] == "answered"
    assert rec["chunk_ids"] == [c["chunk_id"] for c in out["retrieved"]]
    assert rec["model"]["digest"].startswith("sha256:")


def test_ask_tuned_resolves_the_export_and_streams(ws_root: Path) -> None:
    res = _run(ws_root, "ask", PORT_Q, "--model", "tuned")
    assert res.exit_code == 0, res.output
    assert "Sources:" in res.stdout and "docs/networking.md" in res.stdout
    assert "tuned (test) via llama-cpp" in res.stdout
    assert _audit(ws_root)[-1]["model"]["name"] == "tuned (test)"


def test_ask_irrelevant_question_is_refused_without_guessing(ws_root: Path) -> None:
    res = _run(ws_root, "ask", "What is a good recipe for chocolate cake with strawberries?", "--json", "--model", "base")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["refused"] and "don't know" in out["answer"] and out["citations"] == []
    assert "generate_ms" not in out["timings"]  # the model was never asked
    assert _audit(ws_root)[-1]["outcome"] == "no_context"


def test_bm25_mode_keeps_the_relevance_gate(ws_root: Path) -> None:
    # BM25 finds "port" chunks for this question, but none is about it: every dense cosine is
    # under chat.min_score, so raftsmith refuses instead of handing the model port numbers.
    cfg = (ws_root / "raftsmith.yaml").read_text()
    (ws_root / "bm25.yaml").write_text(cfg.replace("mode: hybrid", "mode: bm25"))
    assert "mode: bm25" in (ws_root / "bm25.yaml").read_text()
    q = "Is the port of Marseille a good place to taste bouillabaisse?"
    res = _run(ws_root, "ask", q, "--json", "--model", "base", config="bm25.yaml")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["refused"] and out["below_threshold"] > 0 and "generate_ms" not in out["timings"]
    (ws_root / "bm25.yaml").unlink()


def test_ask_closed_book(ws_root: Path) -> None:
    out = json.loads(_run(ws_root, "ask", PORT_Q, "--no-rag", "--json", "--model", "base").stdout)
    assert out["rag"] is False and out["retrieved"] == [] and out["citations"] == []


def test_budget_drops_lowest_ranked_chunks_on_a_small_context(ws_root: Path) -> None:
    cfg = yaml.safe_load((ws_root / "raftsmith.yaml").read_text())
    cfg["chat"].update({"num_ctx": 512, "top_k": 12})
    (ws_root / "small.yaml").write_text(yaml.safe_dump(cfg))
    res = _run(ws_root, "ask", PORT_Q, "--json", "--model", "base", config="small.yaml")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["dropped_chunks"] > 0 and len(out["retrieved"]) + out["dropped_chunks"] <= 12
    assert out["prompt_tokens"] <= 512 - 32
    # kept chunks are the best-ranked ones, in order
    ranks = [c["score"] for c in out["retrieved"]]
    assert ranks == sorted(ranks, reverse=True)


def test_chat_repl_commands_and_model_switch(ws_root: Path) -> None:
    script = "\n".join([
        PORT_Q, "/sources", "/model tuned", "/model", "On which TCP port is the admin console served?",
        "/reset", "/rag off", "/bogus", "/help", "/quit", "never reached",
    ]) + "\n"
    before = len(_audit(ws_root))
    res = _run(ws_root, "chat", "--model", "base", input=script)
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert "model base (base-q4_k_m.gguf) via llama-cpp" in out  # the export's base GGUF
    assert "docs/networking.md" in out  # /sources
    assert "switched to tuned (test)" in out and "model: tuned (test) (sha256:" in out
    assert "history cleared" in out and "RAG off" in out and "unknown command /bogus" in out
    assert "/model base|tuned|NAME" in out
    new = _audit(ws_root)[before:]
    assert [r["event"] for r in new] == ["chat_turn", "model_switch", "chat_turn"]
    assert new[0]["model"]["name"].startswith("base") and new[2]["model"]["name"] == "tuned (test)"
    assert new[1]["previous"] == "base" and new[1]["requested"] == "tuned"
    assert len({r["session"] for r in new}) == 1


def test_audit_verify_passes_then_names_a_tampered_line(ws_root: Path) -> None:
    from rag.audit import AuditLog

    for _ in range(3):  # the log holds at least three records even when this test runs alone
        AuditLog(ws_root / ".raftsmith" / "audit.jsonl").append("test_marker")
    res = _run(ws_root, "audit", "verify")
    assert res.exit_code == 0, res.output
    assert "chain intact" in res.output
    show = _run(ws_root, "audit", "show", "--tail", "3", "--json")
    assert show.exit_code == 0 and len(show.stdout.splitlines()) == 3
    log = ws_root / ".raftsmith" / "audit.jsonl"
    good = log.read_bytes()
    lines = good.split(b"\n")
    lines[1] = lines[1].replace(b'"event":"', b'"event":"x', 1)
    log.write_bytes(b"\n".join(lines))
    try:
        res = _run(ws_root, "audit", "verify")
        assert res.exit_code == 1
        assert "line 2 is the first bad record" in res.output
        # fail closed: a log whose last record was cut refuses new answers
        log.write_bytes(good[:-20])
        res = _run(ws_root, "ask", PORT_Q, "--model", "base")
        assert res.exit_code == 1 and "incomplete record" in res.output
    finally:
        log.write_bytes(good)


def test_unwritable_audit_log_refuses_to_answer(ws_root: Path) -> None:
    cfg = yaml.safe_load((ws_root / "raftsmith.yaml").read_text())
    (ws_root / "blocker").write_text("a file, not a folder")
    cfg["audit"]["path"] = "blocker/audit.jsonl"
    (ws_root / "noaudit.yaml").write_text(yaml.safe_dump(cfg))
    res = _run(ws_root, "ask", PORT_Q, "--model", "base", config="noaudit.yaml")
    assert res.exit_code == 1
    assert "cannot be written" in res.output and "refused" in res.output
