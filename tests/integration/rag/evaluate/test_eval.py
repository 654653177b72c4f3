"""``raftsmith eval`` end to end on the real backend with a small question file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from _runtime_ws import make_workspace
from click.testing import CliRunner

from rag.cli.main import cli

pytestmark = pytest.mark.integration

QUESTIONS = """questions:
  - category: t
    items:
      - {id: port, question: "Which TCP port does the Kestrel KX-7 relay listen on by default for sensor ingest?", answer: "7431"}
      - {id: skew, question: "Which Kestrel KX-7 error code means the clock skew is above 3.5 s?", answer: "E-417"}
      - {id: cake, unanswerable: true, question: "What is a good recipe for chocolate cake with strawberries?", answer: null}
"""


def test_eval_writes_json_markdown_html_and_chart(tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "ws")
    (root / "q.yaml").write_text(QUESTIONS)
    out = tmp_path / "report"
    res = CliRunner().invoke(cli, ["eval", "--models", "base", "--rag", "--questions", str(root / "q.yaml"),
                                   "--out", str(out), "--json", "--config", str(root / "raftsmith.yaml")])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)["summary"]
    assert len(summary) == 1 and summary[0]["model"] == "base" and summary[0]["rag"] is True
    assert summary[0]["n"] == 3 and summary[0]["answerable"] == 2 and summary[0]["unanswerable"] == 1
    # the off-topic question retrieves nothing relevant -> raftsmith refuses without asking the model
    assert summary[0]["refusal_unanswerable"] == 1.0
    results = json.loads((out / "results.json").read_text())
    rows = {r["id"]: r for r in results["rows"]}
    assert rows["port"]["oracle"] and rows["port"]["oracle_retrieved"] is True  # oracle found by retrieving the answer
    assert rows["cake"]["refused"] is True and rows["cake"]["retrieved"] == []
    assert (out / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    assert "| base | yes | 3 |" in md and "![metrics](chart.png)" in md
    assert "<table>" in (out / "report.html").read_text()
    audit = [json.loads(x) for x in (root / ".raftsmith" / "audit.jsonl").read_text().splitlines()]
    assert [a["eval_item"] for a in audit if a["event"] == "eval"] == ["port", "skew", "cake"]


RECALL_QUESTIONS = """questions:
  - category: t
    items:
      - {id: port, question: "Which TCP port does the Kestrel KX-7 relay listen on by default for sensor ingest?", answer: "7431"}
      - {id: skew, question: "Which Kestrel KX-7 error code means the clock skew is above 3.5 s?", answer: "E-417"}
      - {id: ghost, question: "What is the serial number of the ghost relay?", answer: "ZX-0000-NOT-IN-CORPUS"}
      - {id: cake, unanswerable: true, question: "What is a good recipe for chocolate cake?", answer: null}
"""


def test_eval_retrieval_measures_recall_per_mode_without_a_model(tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "ws")
    (root / "q.yaml").write_text(RECALL_QUESTIONS)
    args = ["eval", "--retrieval", "--questions", str(root / "q.yaml"), "--k", "5", "--config", str(root / "raftsmith.yaml")]
    res = CliRunner().invoke(cli, [*args, "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    # three answerable questions; the answer of one appears nowhere, so no mode can find it
    assert rep["k"] == 5 and rep["questions"] == 3
    assert set(rep["recall"]) == {"dense", "bm25", "hybrid"}
    assert all(0.0 <= v <= 0.6667 for v in rep["recall"].values())  # rounded to 4 places
    assert rep["recall"]["bm25"] == pytest.approx(2 / 3, abs=1e-3)  # exact-term questions: BM25 finds both
    assert rep["recall"][rep["best"]] == max(rep["recall"].values())
    # MRR is at most recall (a found passage ranks 1..k) and breaks ties in recall
    assert all(0.0 < rep["mrr"][m] <= rep["recall"][m] for m in rep["recall"] if rep["recall"][m])
    tied = [m for m in rep["recall"] if rep["recall"][m] == rep["recall"][rep["best"]]]
    assert rep["mrr"][rep["best"]] == max(rep["mrr"][m] for m in tied)
    audit = root / ".raftsmith" / "audit.jsonl"  # no model was asked anything (a cold index cache logs its ingest)
    assert not audit.exists() or {json.loads(x)["event"] for x in audit.read_text().splitlines()} == {"ingest"}
    text = CliRunner().invoke(cli, args)
    assert text.exit_code == 0 and "<- best" in text.output and "recall@5 over 3" in text.output


def test_eval_retrieval_needs_answerable_questions(tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "ws")
    (root / "q.yaml").write_text("questions:\n  - category: t\n    items:\n"
                                 "      - {id: cake, unanswerable: true, question: \"Cake?\", answer: null}\n")
    res = CliRunner().invoke(cli, ["eval", "--retrieval", "--questions", str(root / "q.yaml"),
                                   "--config", str(root / "raftsmith.yaml")])
    assert res.exit_code != 0 and "answerable" in res.output


def test_eval_retrieval_counts_only_chunks_past_the_relevance_gate(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_workspace(tmp_path / "ws")
    (root / "q.yaml").write_text(RECALL_QUESTIONS)
    cfg = root / "raftsmith.yaml"
    data = yaml.safe_load(cfg.read_text())
    data.setdefault("chat", {})["min_score"] = 0.99  # no chunk is that close to a question
    cfg.write_text(yaml.safe_dump(data))
    monkeypatch.chdir(tmp_path)  # a question path typed relative to the current folder
    res = CliRunner().invoke(cli, ["eval", "--retrieval", "--questions", "ws/q.yaml", "--k", "5", "--json",
                                   "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    assert set(json.loads(res.stdout)["recall"].values()) == {0.0}


def test_eval_retrieval_takes_a_folder_of_question_files(tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "ws")
    (root / "qs").mkdir()
    (root / "qs" / "a.yaml").write_text(RECALL_QUESTIONS)
    (root / "qs" / "notes.txt").write_text("not a question file")
    cfg = ["--config", str(root / "raftsmith.yaml")]
    res = CliRunner().invoke(cli, ["eval", "--retrieval", "--questions", str(root / "qs"), "--k", "5", "--json", *cfg])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["questions"] == 3
    (root / "empty").mkdir()
    bad = CliRunner().invoke(cli, ["eval", "--retrieval", "--questions", str(root / "empty"), *cfg])
    assert bad.exit_code != 0 and "holds no *.yaml" in bad.output


def test_models_answer_side_by_side_with_the_same_answers(tmp_path: Path) -> None:
    """Parallel eval (each model on its share of the cores) gives exactly the sequential answers."""
    import shutil

    import llama_cpp
    from _runtime_ws import add_fixture_export

    from rag.config import load_workspace
    from rag.evaluate import run_eval
    from rag.llm.llama_cpp_backend import physical_cores
    from rag.packaged import smollm2_gguf

    if physical_cores() < 2:
        pytest.skip("side-by-side eval needs two physical cores")
    root = make_workspace(tmp_path / "ws")
    d = add_fixture_export(root, smollm2_gguf())
    # A real copy: "tuned" and "base" are then two loaded models (a symlink resolves to one).
    (d / "model-q4_k_m.gguf").unlink()
    shutil.copy(smollm2_gguf(), d / "model-q4_k_m.gguf")
    (root / "q.yaml").write_text(QUESTIONS)
    ws = load_workspace(root / "raftsmith.yaml")
    runs = {}
    for parallel in (False, True):
        events: list[tuple[int, int, str]] = []
        rep = run_eval(ws, models=["base", "tuned"], rag_modes=[True, False], questions=[root / "q.yaml"],
                       out_dir=tmp_path / f"r{parallel}", forgetting=True, probe_limit=3, parallel=parallel,
                       progress=lambda d, t, label, ev=events: ev.append((d, t, label)))
        runs[parallel] = rep
        assert [d for d, _, _ in events] == list(range(1, 2 * (3 * 2 + 3) + 1))  # one event per question
        assert {r["threads_per_model"] for r in rep.summary} == ({1} if parallel else {None})
    key = lambda r: (r["model"], r["rag"], r["id"])  # noqa: E731
    seq = {key(r): r["raw"] for r in runs[False].rows}
    par = {key(r): r["raw"] for r in runs[True].rows}
    assert seq == par and len(seq) == 12
    assert runs[False].probe["rows"] == runs[True].probe["rows"]
    from rag.llm.llama_cpp_backend import _CACHE

    for llm in _CACHE.values():  # the thread counts are given back after the run
        assert llama_cpp.llama_n_threads(llm._ctx.ctx) == llm.context_params.n_threads


def test_a_compared_embedder_reembeds_the_chunks_as_ingest_did(tmp_path: Path) -> None:
    """The same model given as another folder: the in-memory vectors equal the stored ones
    (context, heading and text embedded as ingest embeds them) and so do the figures."""
    import shutil

    import numpy as np

    from rag.config import load_workspace
    from rag.packaged import minilm_dir
    from rag.retrieve import ReembeddedRetriever, Retriever

    root = make_workspace(tmp_path / "ws")
    (root / "q.yaml").write_text(RECALL_QUESTIONS)
    same = shutil.copytree(minilm_dir(), tmp_path / "minilm-copy")
    ws = load_workspace(root / "raftsmith.yaml")
    cfg = ws.config.embedding.model_copy(update={"model": str(same)})
    with Retriever.from_workspace(ws) as live, ReembeddedRetriever(ws.index_dir, cfg, ws.root, ws.config.chat) as other:
        ids, stored = live.store.all_vectors()
        again = np.stack([other._vecs[int(i)] for i in ids])
        assert len(ids) > 10 and float((again * stored).sum(axis=1).min()) > 0.9999
        q = "Which TCP port does the Kestrel KX-7 relay listen on by default for sensor ingest?"
        assert [c.chunk_id for c in other.search(q, k=5, mode="hybrid")] == [c.chunk_id for c in live.search(q, k=5)]
    res = CliRunner().invoke(cli, ["eval", "--retrieval", "--json", "--questions", str(root / "q.yaml"),
                                   "--compare-embedder", str(same), "--config", str(root / "raftsmith.yaml")])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert rep["embedders"][str(same)]["model"] == str(same)
    for mode in ("dense", "hybrid"):  # three questions, well apart from any tie
        assert rep["recall"][f"{mode}@{same}"] == rep["recall"][mode]
        assert rep["mrr"][f"{mode}@{same}"] == rep["mrr"][mode]
    bad = CliRunner().invoke(cli, ["eval", "--compare-embedder", str(same), "--config", str(root / "raftsmith.yaml")])
    assert bad.exit_code != 0 and "goes with --retrieval" in bad.output
    nobase = CliRunner().invoke(cli, ["eval", "--retrieval", "--questions", str(root / "q.yaml"), "--compare-embedder",
                                      "base", "--config", str(root / "raftsmith.yaml")])
    assert nobase.exit_code != 0 and "has no base" in nobase.output
    missing = CliRunner().invoke(cli, ["eval", "--retrieval", "--json", "--questions", str(root / "q.yaml"),
                                       "--compare-embedder", str(tmp_path / "gone"), "--config", str(root / "raftsmith.yaml")])
    assert missing.exit_code == 0, missing.output  # the index's own rows still come; the missing model is named
    assert "error" in json.loads(missing.stdout)["embedders"][str(tmp_path / "gone")]
