"""``raftsmith eval``: A/B evaluation of models x {RAG, closed book}, and the retrieval check.

:mod:`~rag.evaluate.questions` loads the question sets, :mod:`~rag.evaluate.metrics` scores
answers, :mod:`~rag.evaluate.run` runs the models, :mod:`~rag.evaluate.report` writes
results.json, report.md, report.html (jinja2 templates in ``templates/``) and chart.png,
:mod:`~rag.evaluate.preferences` reads the arena marks of ``raftsmith ui``,
:mod:`~rag.evaluate.probe` is the forgetting probe (general questions shipped in ``data/``),
and :mod:`~rag.evaluate.judge` is the optional LLM grader.
"""

from __future__ import annotations

from rag.evaluate.metrics import (
    contains_match,
    content_tokens,
    correct_match,
    exact_match,
    is_refusal,
    normalize,
    percentile,
    score_row,
    summarize,
    token_f1,
    tokens,
)
from rag.evaluate.preferences import PreferenceSummary, append_mark, summarize_marks
from rag.evaluate.probe import ProbeItem, load_probe, probe_correct
from rag.evaluate.questions import (
    EvalItem,
    default_questions,
    load_eval_split,
    load_items,
    load_question_file,
)
from rag.evaluate.report import (
    COLUMNS,
    EvalReport,
    format_value,
    table_header,
    table_rows,
    write_outputs,
)
from rag.evaluate.run import retrieval_recall, run_eval

__all__ = [
    "COLUMNS",
    "EvalItem",
    "EvalReport",
    "PreferenceSummary",
    "ProbeItem",
    "append_mark",
    "contains_match",
    "content_tokens",
    "correct_match",
    "default_questions",
    "exact_match",
    "format_value",
    "is_refusal",
    "load_eval_split",
    "load_items",
    "load_probe",
    "load_question_file",
    "normalize",
    "percentile",
    "probe_correct",
    "retrieval_recall",
    "run_eval",
    "score_row",
    "summarize",
    "summarize_marks",
    "table_header",
    "table_rows",
    "token_f1",
    "tokens",
    "write_outputs",
]
