"""The README's main job, end to end: `raftsmith demo` on the CPU, offline.

Runs the real pipeline once (ingest -> RAFT data -> LoRA on SmolLM2-135M -> GGUF export ->
bundle -> install into a second folder -> A/B evaluation -> audit verify) and checks what a
user is promised: the tuned model beats the base model on the held-out paraphrases, the
reports exist, and the audit log verifies.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from rag.cli.main import cli

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "out"
    # Offline for real: any connection off loopback fails the demo.
    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: object) -> object:
        host = address[0] if isinstance(address, tuple) else str(address)
        if self.family in (socket.AF_INET, socket.AF_INET6) and host not in ("127.0.0.1", "::1", "localhost"):
            raise AssertionError(f"the demo tried to reach {host}")
        return real_connect(self, address)  # type: ignore[arg-type]

    socket.socket.connect = guarded  # type: ignore[method-assign]
    try:
        res = CliRunner().invoke(cli, ["demo", "--out", str(out), "--json"], catch_exceptions=False)
    finally:
        socket.socket.connect = real_connect  # type: ignore[method-assign]
    assert res.exit_code == 0, res.output[-3000:]
    (out / "cli-output.json").write_text(res.output)
    return out


def _result(out: Path) -> dict:
    return json.loads((out / "demo.json").read_text())


def _metric(result: dict, model: str, rag: bool, key: str) -> float:
    for row in result["eval"]["summary"]:
        if row["model"] == model and row["rag"] is rag:
            return float(row[key] or 0.0)
    raise AssertionError(f"no eval row for {model} rag={rag}")


def test_tuned_beats_base_on_heldout_paraphrases(demo_out: Path) -> None:
    result = _result(demo_out)
    # The headline is "correct": the reference's content in the answer, any wording. Measured
    # on this machine class (benchmarks/results/demo.json): with RAG tuned 0.90 vs base 0.40,
    # strict exact 0.90 vs 0.00, F1 0.93 vs 0.14, over 20 held-out paraphrases. The floors
    # leave three questions of slack for float differences between CPUs.
    tuned, base = _metric(result, "tuned", True, "correct"), _metric(result, "base", True, "correct")
    assert tuned >= base + 0.25, f"tuned {tuned:.2f} did not beat base {base:.2f} with RAG"
    assert tuned >= 0.65
    assert _metric(result, "tuned", True, "exact") >= _metric(result, "base", True, "exact") + 0.30
    assert _metric(result, "tuned", True, "f1") >= _metric(result, "base", True, "f1") + 0.20
    assert _metric(result, "tuned", True, "contains") >= _metric(result, "base", True, "contains") - 0.10
    assert _metric(result, "tuned", True, "refusal_unanswerable") >= _metric(result, "base", True, "refusal_unanswerable")
    assert _metric(result, "tuned", True, "false_refusal") <= 0.10
    assert result["generate"]["refusal_rows"] == 6


def test_tuned_knows_the_domain_closed_book(demo_out: Path) -> None:
    """No documents in the prompt: the closed-book rows made the facts stick (measured 0.35
    and 0.50 vs 0.00 on phrasings never trained on, in two stops' runs), and the replay rows
    kept most of what the base model knew in general (measured retention 0.62 on the
    110-question probe)."""
    result = _result(demo_out)
    tuned, base = _metric(result, "tuned", False, "correct"), _metric(result, "base", False, "correct")
    assert tuned >= base + 0.30, f"closed book: tuned {tuned:.2f} vs base {base:.2f}"
    probe = result["eval"]["forgetting_probe"]
    assert probe["n"] >= 100 and probe["right"]["base"] > 30
    assert probe["retention"]["tuned"] >= 0.45
    gen = result["generate"]
    assert gen["closed_book_rows"] >= 150 and gen["split"]["facts_withheld"] == 0
    assert result["train"]["replay_rows"] > 0
    assert result["train"]["knowledge"]["history"], "closed-book accuracy was scored per epoch"


def test_retrieval_mode_chosen_on_training_questions(demo_out: Path) -> None:
    result = _result(demo_out)
    rep = result["retrieval"]
    assert rep["questions"] == 50 and rep["k"] == 2  # the curated set, never the held-out file
    assert rep["recall"][rep["best"]] == max(rep["recall"].values())
    laptop_cfg = (demo_out / "laptop" / "raftsmith.yaml").read_text()
    assert f"mode: {rep['best']}" in laptop_cfg  # the choice travelled in the bundle


def test_every_stage_ran_for_real(demo_out: Path) -> None:
    result = _result(demo_out)
    assert result["ingest"]["total_chunks"] > 50
    assert result["generate"]["train_rows"] >= 30
    assert result["train"]["final_loss"] is not None and result["train"]["final_loss"] < 1.0
    laptop = demo_out / "laptop"
    ggufs = sorted(p.name for p in (laptop / "gguf").rglob("*.gguf"))
    assert any(n.startswith("model-q4_k_m") for n in ggufs), ggufs
    assert "adapter.gguf" in ggufs and any(n.startswith("base-") for n in ggufs)
    assert list((laptop / "gguf").rglob("Modelfile"))
    assert (demo_out / "kestrel-bundle.tar").stat().st_size > 50_000_000  # models + embedder travel


def test_reports_and_audit(demo_out: Path) -> None:
    result = _result(demo_out)
    for name in ("results.json", "report.html", "report.md", "chart.png"):
        assert Path(result["report_files"][name]).stat().st_size > 0
    assert Path(result["report_files"]["chart.png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["audit_ok"] is True and result["audit_records"] > 0
    res = CliRunner().invoke(cli, ["audit", "verify", "--config", str(demo_out / "laptop" / "raftsmith.yaml")])
    assert res.exit_code == 0, res.output
