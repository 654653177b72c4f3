"""The offline CPU demo: the whole home -> laptop journey on the embedded defaults.

Home side (a temporary workspace): ingest the Kestrel sample corpus, build RAFT rows from
the curated question set (reference answers: no network), LoRA-tune SmolLM2-135M, export
merged + adapter GGUFs with Modelfiles, pack a bundle. Laptop side (a second folder):
install the bundle (verified first), run the base vs tuned A/B evaluation over the
held-out paraphrases with and without retrieval through the in-process llama.cpp backend,
write the reports and verify the audit log.

Every step is a library call that the CLI verbs also use; nothing here is demo-only logic
except choosing small, fast settings.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag.config import Workspace, dump_config, init_workspace, load_workspace
from rag.errors import ConfigError, RaftsmithError
from rag.progress import Progress

SAMPLE_NAME = "kestrel"


def sample_dir() -> Path:
    """The sample corpus shipped in the repository (examples/kestrel)."""
    here = Path(__file__).resolve().parents[1] / "examples" / SAMPLE_NAME
    if not (here / "docs").is_dir():
        raise ConfigError(
            f"The sample corpus was not found at {here}. Run the demo from a raftsmith checkout "
            "(git clone ...; bash .ci/bootstrap demo)."
        )
    return here


def questions_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "domain_questions"


@dataclass
class DemoResult:
    out_dir: Path
    seconds: float = 0.0
    steps: dict[str, float] = field(default_factory=dict)
    ingest: dict[str, Any] = field(default_factory=dict)
    generate: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    export: dict[str, Any] = field(default_factory=dict)
    bundle: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)
    retrieval: dict[str, Any] = field(default_factory=dict)
    audit_ok: bool = False
    audit_records: int = 0
    report_files: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["out_dir"] = str(self.out_dir)
        return d


def _home_workspace(root: Path, epochs: float) -> Workspace:
    ws = init_workspace(root, corpus_name=SAMPLE_NAME, force=True)
    shutil.rmtree(ws.root / "docs")
    shutil.copytree(sample_dir() / "docs", ws.root / "docs")
    for name in (f"{SAMPLE_NAME}.yaml", f"{SAMPLE_NAME}-heldout.yaml"):
        shutil.copy(questions_dir() / name, ws.root / "domain_questions" / name)
    cfg = ws.config
    cfg.raft.questions = [f"domain_questions/{SAMPLE_NAME}.yaml"]
    # The held-out paraphrases are the test; every curated question may be trained on.
    cfg.raft.eval_fraction = 0.1
    # Small chunks and one distractor keep each RAFT row near 250 tokens: three epochs of
    # LoRA on two CPU cores then take minutes, not the better part of an hour.
    cfg.corpus.chunk_tokens = 64
    cfg.corpus.chunk_overlap = 8
    cfg.raft.n_distractors = 1
    # Knowledge that sticks: every phrasing of a fact (the item and its paraphrases:) gets a
    # closed-book row (raft.closed_book, default 1.0); on the CPU only the item's own wording
    # also gets a RAFT row, since RAFT rows (documents in the prompt) are four times longer.
    cfg.raft.rag_rows = "first_phrasing"
    cfg.student.family = "smollm2"
    cfg.student.epochs = epochs
    # LoRA on the top half of SmolLM2's 30 layers: the backward pass stops at layer 15, which
    # nearly halves a CPU training step. (The default recipe adapts every layer.)
    cfg.student.lora.top_layers = 15
    cfg.export.quantizations = ["q4_k_m"]
    cfg.export.adapter = True
    cfg.chat.backend = "llama-cpp"
    cfg.chat.top_k = 2
    # Room for the quote, the citation and the answer line of a tuned reply.
    cfg.chat.max_tokens = 64
    assert ws.config_path is not None
    ws.config_path.write_text(dump_config(cfg), encoding="utf-8")
    return load_workspace(ws.config_path)


def _choose_mode(ws: Workspace) -> dict[str, Any]:
    """Measure recall@top_k of each retrieval mode on the training questions (never the
    held-out ones) and write the best into the workspace config the bundle carries.

    On the Kestrel corpus, full of invented names a general embedding model has never seen,
    BM25 finds the answer-bearing chunk more often than dense or fused retrieval.
    """
    from rag.evaluate import load_items, retrieval_recall

    rep = retrieval_recall(ws, load_items(ws, ws.config.raft.questions))
    ws.config.chat.mode = rep["best"]
    assert ws.config_path is not None
    ws.config_path.write_text(dump_config(ws.config), encoding="utf-8")
    return rep


def run_demo(
    out_dir: str | Path = "demo-out",
    epochs: float = 3.0,
    progress: Progress | None = None,
    say: Callable[[str], None] = print,
) -> DemoResult:
    """Every step of the journey, in order; ``progress`` gets each step's events, ``say`` the step names."""
    from builder.export.run import run_export
    from builder.generate.engine import run_generate
    from builder.train.run import run_train
    from rag.audit import verify as audit_verify
    from rag.bundle import create_bundle, install_bundle
    from rag.evaluate import run_eval
    from rag.ingest.pipeline import ingest

    out = Path(out_dir).resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    result = DemoResult(out_dir=out)
    t_all = time.monotonic()

    def step(name: str, fn: Callable[[], Any]) -> Any:
        say(f"==> {name}")
        t0 = time.monotonic()
        try:
            value = fn()
        except RaftsmithError as err:
            raise type(err)(f"demo step '{name}' failed: {err}") from None
        result.steps[name] = round(time.monotonic() - t0, 2)
        say(f"    done in {result.steps[name]:.1f} s")
        return value

    home = step("home workspace", lambda: _home_workspace(out / "home", epochs))
    rep = step("ingest sample corpus", lambda: ingest(home, progress=progress))
    result.ingest = rep.to_dict()
    gen = step("generate RAFT data (reference answers, offline)", lambda: run_generate(home, teacher="none", progress=progress))
    result.generate = gen.to_dict()
    retrieval = step("choose the retrieval mode on the curated questions", lambda: _choose_mode(home))
    result.retrieval = retrieval
    say(f"    recall@{retrieval['k']}: " + ", ".join(f"{m} {v:.2f}" for m, v in retrieval["recall"].items())
        + f" -> chat.mode {retrieval['best']}")
    tr = step("LoRA-train SmolLM2-135M on the CPU", lambda: run_train(home, progress=progress))
    result.train = tr.to_dict()
    ex = step("export GGUFs + Modelfiles", lambda: run_export(home, progress=progress))
    result.export = ex.to_dict()
    bundle_path = out / f"{SAMPLE_NAME}-bundle.tar"
    b = step("bundle for the air gap", lambda: create_bundle(home, bundle_path, progress=progress))
    result.bundle = b.to_dict()
    laptop_dir = out / "laptop"
    step("install bundle on the 'laptop'", lambda: install_bundle(bundle_path, laptop_dir, progress=progress))
    laptop = load_workspace(laptop_dir)
    heldout = laptop.root / "domain_questions" / f"{SAMPLE_NAME}-heldout.yaml"
    report_dir = out / "report"
    ev = step(
        "A/B evaluation: base vs tuned, with and without RAG, and the forgetting probe",
        lambda: run_eval(laptop, models=["base", "tuned"], rag_modes=[True, False], questions=[heldout],
                         out_dir=report_dir, progress=progress, forgetting=True),
    )
    result.eval = {"summary": ev.summary, "out_dir": str(ev.out_dir),
                   "forgetting_probe": {k: v for k, v in (ev.probe or {}).items() if k != "rows"}}
    ver = step("verify the audit log", lambda: audit_verify(laptop.audit_path))
    result.audit_ok = ver.ok
    result.audit_records = ver.records
    result.seconds = round(time.monotonic() - t_all, 1)
    for name in ("results.json", "report.html", "report.md", "chart.png"):
        if (report_dir / name).exists():
            result.report_files[name] = str(report_dir / name)
    (out / "demo.json").write_text(json.dumps(result.to_dict(), indent=2, default=str), encoding="utf-8")
    return result


def comparison(summary: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """The headline (correct: the reference's content in the answer) of base and tuned per
    retrieval mode, from the eval summary rows."""
    out: dict[str, dict[str, float | None]] = {}
    for row in summary:
        mode = "rag" if row.get("rag") else "no-rag"
        out.setdefault(mode, {})[str(row.get("model"))] = row.get("correct")
    return out


def print_summary(result: DemoResult) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title="A/B on held-out paraphrases (Kestrel sample corpus)")
    for col in ("model", "RAG", "correct", "strict exact", "contains", "F1", "citations ok", "refuses unanswerable",
                "general knowledge", "retention", "p50 ms"):
        table.add_column(col)

    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        return f"{v:.2f}" if isinstance(v, float) and v <= 1 else str(v)

    for row in result.eval.get("summary", []):
        table.add_row(str(row.get("model_label") or row.get("model")), "yes" if row.get("rag") else "no",
                      fmt(row.get("correct")), fmt(row.get("exact")), fmt(row.get("contains")), fmt(row.get("f1")), fmt(row.get("citation_accuracy")),
                      fmt(row.get("refusal_unanswerable")), fmt(row.get("general_right")), fmt(row.get("retention")),
                      fmt(row.get("latency_p50_ms")))
    console.print(table)
    steps = ", ".join(f"{k} {v:.0f}s" for k, v in result.steps.items())
    console.print(f"Steps: {steps}")
    console.print(f"Audit log: {'verified' if result.audit_ok else 'FAILED'} ({result.audit_records} records)")
    for name, path in result.report_files.items():
        console.print(f"{name}: {path}")
    console.print(f"Total: {result.seconds:.0f} s. Everything is in {result.out_dir}")
