"""Question sets for ``raftsmith eval``: question YAML files, the eval split, the defaults.

Questions come from the eval split (training_data/<corpus>.eval.jsonl, rows carry the oracle
chunk ids) and/or question YAML files (items with ``unanswerable: true`` / ``answer: null``
expect a refusal); with neither given, the eval split plus the ``holdout: true`` files.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rag.config import Workspace
from rag.errors import ConfigError


@dataclass
class EvalItem:
    id: str
    question: str
    answer: str | None
    unanswerable: bool = False
    oracle_chunk_ids: list[str] = field(default_factory=list)
    origin: str = ""


def load_question_file(path: Path) -> list[EvalItem]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"Cannot read question file {path}: {err}") from None
    groups: list[Any]
    if isinstance(data, dict) and "questions" in data:
        groups = data["questions"] or []
    elif isinstance(data, list):
        groups = data
    else:
        raise ConfigError(f"{path}: expected 'questions:' with a list of items or categories (see domain_questions/).")
    items: list[EvalItem] = []

    def add(item: Any) -> None:
        if isinstance(item, str):
            item = {"question": item}
        if not isinstance(item, dict) or not isinstance(item.get("question"), str):
            raise ConfigError(f"{path}: every item needs a 'question' string (got {item!r})")
        ans = item.get("answer")
        unans = bool(item.get("unanswerable")) or ("answer" in item and ans is None)
        qid = str(item.get("id") or f"q{len(items) + 1}")
        items.append(EvalItem(qid, item["question"], None if ans is None else str(ans), unans, origin=str(path.name)))

    for g in groups:
        if isinstance(g, dict) and "items" in g:
            for it in g["items"] or []:
                add(it)
        else:
            add(g)
    return items


def load_eval_split(path: Path) -> list[EvalItem]:
    items = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            meta = json.loads(line)["meta"]
            items.append(EvalItem(str(meta.get("id") or f"row{n}"), meta["question"], meta.get("answer"),
                                  meta.get("answer") is None, list(meta.get("oracle_chunk_ids") or []), path.name))
        except (ValueError, KeyError, TypeError):
            raise ConfigError(f"{path}:{n} is not a training row with meta.question; regenerate with 'raftsmith generate'.") from None
    return items


def default_questions(ws: Workspace) -> list[EvalItem]:
    items: list[EvalItem] = []
    split = ws.training_dir / f"{ws.config.corpus.name}.eval.jsonl"
    if split.is_file():
        items += load_eval_split(split)
    for f in sorted((ws.root / "domain_questions").glob("*.y*ml")):
        try:
            holdout = bool((yaml.safe_load(f.read_text(encoding="utf-8")) or {}).get("holdout"))
        except (yaml.YAMLError, AttributeError):
            holdout = False
        if holdout:
            items += load_question_file(f)
    if not items:
        raise ConfigError(f"No evaluation questions: no {split} and no holdout question file in domain_questions/. "
                          "Run 'raftsmith generate' (it writes the eval split) or pass --questions FILE.")
    return items


def _question_files(p: Path) -> list[Path]:
    """A question file, or the question files (*.yaml, *.yml, *.jsonl) directly in a folder."""
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix in (".yaml", ".yml", ".jsonl"))
        if not files:
            raise ConfigError(f"Question folder {p} holds no *.yaml or *.jsonl files; pass a question file instead.")
        return files
    if not p.is_file():
        raise ConfigError(f"Question file {p} does not exist; pass a domain_questions/*.yaml file, "
                          "an eval split (*.jsonl) or a folder of them.")
    return [p]


def load_items(ws: Workspace, questions: Sequence[str | Path] | None = None, limit: int | None = None) -> list[EvalItem]:
    """Items from question YAML / eval JSONL files, or the workspace's default eval questions."""
    items: list[EvalItem] = []
    for q in questions or []:
        # a path typed on the command line is taken from the current folder when it is there,
        # else from the workspace root (config values and the defaults are root-relative)
        given = Path(q).expanduser()
        for p in _question_files(given if given.exists() else ws.path(q)):
            items += load_eval_split(p) if p.suffix == ".jsonl" else load_question_file(p)
    if not questions:
        items = default_questions(ws)
    return items[:limit] if limit else items
