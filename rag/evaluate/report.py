"""The eval report: the summary table's columns and rows, and the files written.

``results.json`` holds everything; ``report.md`` and ``report.html`` are rendered from the
jinja2 templates shipped beside this module; ``chart.png`` is drawn with matplotlib.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rag.config import Workspace


@dataclass
class EvalReport:
    out_dir: Path
    summary: list[dict[str, Any]]
    rows: list[dict[str, Any]]
    probe: dict[str, Any] | None = None  # the forgetting probe, when run

    def table(self) -> list[dict[str, Any]]:
        return self.summary


COLUMNS = [("model", "model"), ("rag", "RAG"), ("n", "n"), ("correct", "correct"), ("exact", "strict exact"),
           ("contains", "contains"), ("f1", "F1"), ("citation_accuracy", "citations ok"),
           ("refusal_unanswerable", "refuses unanswerable"), ("false_refusal", "false refusals"),
           ("confident_wrong", "answers anyway when wrong"), ("general_right", "general knowledge"),
           ("retention", "retention"), ("judge_score", "judge"), ("latency_p50_ms", "p50 ms")]


PER_QUESTION_COLUMNS = ["model", "RAG", "id", "reference", "answer", "correct", "exact", "cited oracle", "refused"]


def format_value(v: Any) -> str:
    """How a summary or row value is shown to people: '-', yes/no, rates to 2 places."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.2f}" if v <= 1.0 else f"{v:.0f}"
    return str(v)


def table_header() -> list[str]:
    """The headings of the summary table (the CLI, report.md and report.html share them)."""
    return [head for _, head in COLUMNS]


def table_rows(summary: list[dict[str, Any]]) -> list[list[str]]:
    """One formatted row of the summary table per (model, mode) summary."""
    return [[format_value(s.get(k)) for k, _ in COLUMNS] for s in summary]


def probe_line(probe: dict[str, Any] | None) -> str | None:
    """One sentence on the forgetting probe, for the reports (None when it did not run)."""
    if probe is None:
        return None
    line = (f"{probe['n']} general questions, closed book: right "
            + ", ".join(f"{m} {n}" for m, n in probe["right"].items()))
    if probe["retention"]:
        line += ("; retention of the base model's right answers "
                 + ", ".join(f"{m} {format_value(v)}" for m, v in probe["retention"].items()))
    return line + "."


def _per_question(rows: list[dict[str, Any]], answer_chars: int, markdown: bool) -> list[list[str]]:
    out = []
    for r in rows:
        answer = str(r["answer"])
        answer = answer.replace("|", "\\|").replace("\n", " ")[:answer_chars] if markdown else answer[:answer_chars]
        out.append([str(r["model"]), format_value(r["rag"]), str(r["id"]), format_value(r["reference"]), answer,
                    format_value(r.get("correct")), format_value(r.get("exact")), format_value(r.get("citation_correct")), format_value(r["refused"])])
    return out


def _templates() -> Any:
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("rag.evaluate", "templates"),
        autoescape=jinja2.select_autoescape(["html.j2"], default_for_string=False),
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def write_outputs(report: EvalReport, ws: Workspace) -> None:
    out = report.out_dir
    meta = {"created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "workspace": str(ws.root),
            "corpus": ws.config.corpus.name, "backend": ws.config.chat.backend, "top_k": ws.config.chat.top_k,
            "min_score": ws.config.chat.min_score}
    (out / "results.json").write_text(json.dumps({"meta": meta, "summary": report.summary, "rows": report.rows,
                                                  "forgetting_probe": report.probe},
                                                 indent=2, ensure_ascii=False), encoding="utf-8")
    env = _templates()
    context = {"corpus": ws.config.corpus.name, "created_at": meta["created_at"], "header": table_header(),
               "rows": table_rows(report.summary), "question_header": PER_QUESTION_COLUMNS,
               "probe": probe_line(report.probe)}
    (out / "report.md").write_text(env.get_template("report.md.j2").render(
        **context, questions=_per_question(report.rows, 80, markdown=True)), encoding="utf-8")
    (out / "report.html").write_text(env.get_template("report.html.j2").render(
        **context, questions=_per_question(report.rows, 200, markdown=False)), encoding="utf-8")
    _chart(report, out / "chart.png")


def _chart(report: EvalReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [("correct", "correct"), ("exact", "strict exact"), ("contains", "contains"), ("f1", "F1"),
               ("citation_accuracy", "citations ok"), ("refusal_unanswerable", "refuses unanswerable")]
    if report.probe is not None:
        metrics.append(("retention", "retention"))
    fig, ax = plt.subplots(figsize=(8, 4))
    n = max(1, len(report.summary))
    width = 0.8 / n
    for i, s in enumerate(report.summary):
        vals = [s.get(k) or 0.0 for k, _ in metrics]
        ax.bar([x + i * width for x in range(len(metrics))], vals, width, label=f"{s['model']} {'RAG' if s['rag'] else 'no RAG'}")
    ax.set_xticks([x + (n - 1) * width / 2 for x in range(len(metrics))], [lbl for _, lbl in metrics])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("rate")
    ax.set_title("raftsmith eval")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
