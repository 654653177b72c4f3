"""Questions for RAFT: loaded from domain_questions/*.yaml or synthesized from chunks.

YAML format (see domain_questions/kestrel.yaml)::

    questions:
      - category: Operations
        items:
          - "Which port does the gateway listen on by default?"
          - {id: ops-port, question: "...", answer: "..."}

An item is a bare question string or a mapping with ``question`` and optional ``id``,
``answer``, ``paraphrases`` (more phrasings of the same question: each is trained on as its
own question with the same answer, id ``<id>~<hash>``) and extra keys (``paraphrase_of``,
``unanswerable``). A mapping of
``category: [items]`` is accepted too. Ids are the given id, or a hash of the question, so
they are stable across runs; resume and the cache key on them.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rag.errors import ConfigError
from rag.types import Chunk

SYNTH_CATEGORIES = (
    "facts",
    "api shape",
    "code examples",
    "procedures",
    "errors",
    "edge cases",
    "troubleshooting",
    "multi-turn",
)

# A question that points at "the passage" is useless at answer time: the user has no passage.
_NOT_SELF_CONTAINED = re.compile(
    r"\b(this|the|that|above|following|given|provided)\s+(document|passage|text|section|excerpt|context|snippet|chunk|paragraph)s?\b"
    r"|\btext above\b|\babove (text|passage|document)\b|\bmentioned (above|here)\b",
    re.IGNORECASE,
)


@dataclass
class Question:
    """One question to turn into a training row."""

    id: str
    question: str
    answer: str | None = None
    category: str = ""
    origin: str = ""  # "path/to/file.yaml" or "synth:<chunk_id>"
    oracle_chunk_ids: list[str] = field(default_factory=list)  # known for synthesized questions
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def held_out(self) -> bool:
        """Paraphrases kept apart for evaluation are never trained on."""
        return bool(self.extra.get("paraphrase_of")) or bool(self.extra.get("held_out"))

    @property
    def unanswerable(self) -> bool:
        return bool(self.extra.get("unanswerable")) or ("answer" in self.extra and self.answer is None)


def question_id(text: str, prefix: str = "q") -> str:
    norm = " ".join(text.lower().split())
    return f"{prefix}-{hashlib.sha256(norm.encode('utf-8')).hexdigest()[:12]}"


def is_self_contained(question: str) -> bool:
    return _NOT_SELF_CONTAINED.search(question) is None


# ---------------------------------------------------------------- YAML loading


def _line_of(node: yaml.Node | None, path: Sequence[str | int]) -> int | None:
    """1-based line of the YAML node at ``path`` (keys and list indexes), best effort."""
    for step in path:
        if node is None:
            return None
        if isinstance(node, yaml.MappingNode) and isinstance(step, str):
            node = next((v for k, v in node.value if getattr(k, "value", None) == step), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(step, int) and step < len(node.value):
            node = node.value[step]
        else:
            return None
    return None if node is None else node.start_mark.line + 1


class _Ctx:
    def __init__(self, path: Path, text: str):
        self.path = path
        try:
            self.root = yaml.compose(text)
        except yaml.YAMLError:
            self.root = None

    def fail(self, where: Sequence[str | int], msg: str) -> ConfigError:
        line = _line_of(self.root, where)
        loc = "".join(f"[{w}]" if isinstance(w, int) else f".{w}" for w in where).lstrip(".") or "(top level)"
        at = f"{self.path}:{line}" if line else str(self.path)
        return ConfigError(
            f"{at}: {loc}: {msg}. Expected 'questions: [{{category: NAME, items: [QUESTION | "
            "{id, question, answer}]}]' (see domain_questions/kestrel.yaml)."
        )


def _parse_item(ctx: _Ctx, item: Any, where: list[str | int], category: str) -> Question:
    if isinstance(item, str):
        if not item.strip():
            raise ctx.fail(where, "empty question")
        return Question(id=question_id(item), question=item.strip(), category=category, origin=str(ctx.path))
    if not isinstance(item, dict):
        raise ctx.fail(where, f"an item must be a string or a mapping, not {type(item).__name__}")
    text = item.get("question")
    if not isinstance(text, str) or not text.strip():
        raise ctx.fail(where, "item has no 'question' string")
    qid = item.get("id")
    if qid is not None and (not isinstance(qid, (str, int)) or not str(qid).strip()):
        raise ctx.fail([*where, "id"], "'id' must be a non-empty string")
    answer = item.get("answer")
    if answer is not None and not isinstance(answer, (str, int, float)):
        raise ctx.fail([*where, "answer"], "'answer' must be a string (or null for unanswerable)")
    extra = {k: v for k, v in item.items() if k not in ("id", "question", "paraphrases")}
    return Question(
        id=str(qid).strip() if qid is not None else question_id(text),
        question=text.strip(),
        answer=None if answer is None else str(answer).strip(),
        category=str(item.get("category") or category),
        origin=str(ctx.path),
        extra=extra,
    )


def phrasing_key(text: str) -> str:
    """What makes two phrasings the same: case, spacing and end punctuation ignored."""
    return " ".join(text.lower().split()).strip(" ?.!")


def _paraphrases(ctx: _Ctx, item: Any, where: list[str | int], base: Question) -> list[Question]:
    """The item's ``paraphrases:``: each another phrasing of the same fact, trained on as its
    own question (same answer, ``extra.fact`` = the item's id). Repeats are dropped."""
    if not isinstance(item, dict) or "paraphrases" not in item:
        return []
    given = item["paraphrases"]
    if given is None:
        return []
    if not isinstance(given, list):
        raise ctx.fail([*where, "paraphrases"], "'paraphrases' must be a list of question strings")
    if base.unanswerable or base.held_out:
        # an unanswerable or held-out item's phrasings would be refusal rows or eval items
        # that nobody asked for; say so instead of guessing
        raise ctx.fail([*where, "paraphrases"], "'paraphrases' belong to answerable training items; "
                       "give held-out phrasings their own items with paraphrase_of")
    seen = {phrasing_key(base.question)}
    out: list[Question] = []
    for j, text in enumerate(given):
        if not isinstance(text, str) or not text.strip():
            raise ctx.fail([*where, "paraphrases", j], "every paraphrase must be a non-empty question string")
        key = phrasing_key(text)
        if key in seen:
            continue  # the same phrasing twice trains nothing new
        seen.add(key)
        out.append(Question(
            id=f"{base.id}~{hashlib.sha256(key.encode('utf-8')).hexdigest()[:8]}",
            question=text.strip(), answer=base.answer, category=base.category, origin=base.origin,
            extra={**base.extra, "fact": base.id, "phrasing_of": base.id},
        ))
    return out


def load_question_file(path: Path) -> list[Question]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"Cannot read question file {path}: {err.strerror}. Fix raft.questions or --questions.") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}. Fix the syntax at the position shown.") from None
    ctx = _Ctx(path, text)
    if data is None:
        return []
    if not isinstance(data, dict):
        raise ctx.fail([], f"the file must hold a mapping, not {type(data).__name__}")
    # (category, [(item, location)])
    groups: list[tuple[str, list[tuple[Any, list[str | int]]]]] = []
    if "questions" in data:
        qs = data["questions"]
        if not isinstance(qs, list):
            raise ctx.fail(["questions"], "'questions' must be a list of {category, items}")
        for i, g in enumerate(qs):
            if isinstance(g, str) or (isinstance(g, dict) and "items" not in g and "question" in g):
                groups.append(("", [(g, ["questions", i])]))  # a bare item without a category
                continue
            if not isinstance(g, dict) or not isinstance(g.get("items"), list):
                raise ctx.fail(["questions", i], "each entry needs 'category' and an 'items' list")
            items = g["items"]
            groups.append((str(g.get("category") or ""), [(it, ["questions", i, "items", j]) for j, it in enumerate(items)]))
    else:
        for cat, items in data.items():
            if cat in ("name", "description", "version", "holdout"):
                continue
            if not isinstance(items, list):
                raise ctx.fail([str(cat)], f"category '{cat}' must map to a list of items")
            groups.append((str(cat), [(it, [str(cat), j]) for j, it in enumerate(items)]))
    held_out = bool(data.get("holdout"))
    out: list[Question] = []
    for category, entries in groups:
        for item, loc in entries:
            q = _parse_item(ctx, item, loc, category)
            if held_out:
                q.extra["held_out"] = True  # a file marked 'holdout: true' is evaluation only
            out.append(q)
            out.extend(_paraphrases(ctx, item, loc, q))
    return out


def question_files(paths: Iterable[Path]) -> list[Path]:
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files.extend(sorted([*p.glob("*.yaml"), *p.glob("*.yml")]))
        elif p.is_file():
            files.append(p)
        else:
            raise ConfigError(f"Question file or folder {p} does not exist. Fix raft.questions or --questions.")
    return files


def load_questions(paths: Iterable[Path]) -> list[Question]:
    """All questions from the given files/folders; duplicate ids are an error."""
    seen: dict[str, str] = {}
    out: list[Question] = []
    for f in question_files(paths):
        for q in load_question_file(f):
            if q.id in seen:
                if seen[q.id] == q.question:
                    continue  # the same question listed twice: harmless
                raise ConfigError(
                    f"{f}: question id '{q.id}' is used twice (also in {q.origin if q.origin != str(f) else 'this file'}). "
                    "Give every item a unique id."
                )
            seen[q.id] = q.question
            out.append(q)
    return out


# ---------------------------------------------------------------- synthesis

SYNTH_PROMPT_VERSION = "synth-v2"  # v2: the chunk's atomic facts, each with its answer and phrasings
#: facts asked for per chunk at most (raft.synthesize_max_facts)
SYNTH_MAX_FACTS = 12


def synthesis_schema(n: int, max_facts: int = SYNTH_MAX_FACTS) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "facts": {
                "type": "array",
                "maxItems": max(max_facts, 1),
                "items": {
                    "type": "object",
                    "properties": {
                        "fact": {"type": "string", "minLength": 8},
                        "answer": {"type": "string", "minLength": 1},
                        "questions": {"type": "array", "minItems": 1, "maxItems": max(n, 1),
                                      "items": {"type": "string", "minLength": 8}},
                        "category": {"type": "string", "enum": list(SYNTH_CATEGORIES)},
                    },
                    "required": ["fact", "answer", "questions", "category"],
                },
            }
        },
        "required": ["facts"],
    }


def synthesis_messages(chunk: Chunk, n: int, max_facts: int = SYNTH_MAX_FACTS) -> list[dict[str, str]]:
    system = (
        "You write questions that a user of a product would ask, one fact at a time: you list "
        "the atomic facts a document states (one value, name, limit, step or cause each) and "
        "write questions whose answer is that fact. Every question must be fully "
        "self-contained: name the product, command or setting it is about, and never refer to "
        "'the document', 'the passage', 'the text' or 'above'. Reply with JSON only."
    )
    cats = ", ".join(SYNTH_CATEGORIES)
    user = (
        f"Document (from {chunk.source}, section '{chunk.heading}'):\n<document>\n{chunk.text.strip()}\n</document>\n\n"
        f"List every atomic fact this document states, at most {max_facts}. For each: the fact as one "
        "sentence; its short answer, copied word for word from the document (a value, name, number or "
        f"short phrase); {n} differently worded questions that this fact answers; and a category from: {cats}. "
        'Reply as {"facts": [{"fact": "...", "answer": "...", "questions": ["..."], "category": "..."}]}.'
    )
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def questions_from_synthesis(chunk: Chunk, data: dict[str, Any], n: int,
                             max_facts: int = SYNTH_MAX_FACTS) -> tuple[list[Question], dict[str, int]]:
    """Questions from one synthesis reply: per fact one question (the fact's id) and its other
    phrasings (``extra.fact`` = that id, as a question file's ``paraphrases:``), each with the
    fact's answer and the chunk as oracle; counts of rejected facts and phrasings by reason.

    A fact whose answer is not in the chunk (as whole words, normalised) is dropped: the
    teacher invented or reworded it, and a closed-book row would teach it."""
    from rag.evaluate.metrics import contains_words, normalize

    rejected: dict[str, int] = {}

    def reject(reason: str) -> None:
        rejected[reason] = rejected.get(reason, 0) + 1

    out: list[Question] = []
    seen_q: set[str] = set()
    seen_facts: set[str] = set()
    chunk_text = normalize(f"{chunk.heading}\n{chunk.text}")
    facts = data.get("facts") if isinstance(data, dict) else None
    for entry in (facts if isinstance(facts, list) else [])[:max_facts]:
        if not isinstance(entry, dict):
            reject("synth_fact_malformed")
            continue
        fact, answer = str(entry.get("fact") or "").strip(), str(entry.get("answer") or "").strip()
        if len(fact) < 8 or not answer:
            reject("synth_fact_malformed")
            continue
        if phrasing_key(fact) in seen_facts:
            reject("synth_fact_duplicate")
            continue
        if not contains_words(chunk_text, normalize(answer)):
            reject("synth_answer_not_in_chunk")
            continue
        phrasings: list[str] = []
        given = entry.get("questions")
        for text in (given if isinstance(given, list) else [])[:n]:
            text = str(text).strip()
            if len(text) < 8:
                reject("synth_empty")
            elif not is_self_contained(text):
                reject("synth_not_self_contained")
            elif phrasing_key(text) in seen_q:
                reject("synth_duplicate")
            else:
                seen_q.add(phrasing_key(text))
                phrasings.append(text)
        if not phrasings:
            reject("synth_fact_without_question")
            continue
        seen_facts.add(phrasing_key(fact))
        cat = str(entry.get("category") or "facts")
        base = Question(id=question_id(chunk.chunk_id + "\n" + fact, prefix="s"), question=phrasings[0], answer=answer,
                        category=cat if cat in SYNTH_CATEGORIES else "facts", origin=f"synth:{chunk.chunk_id}",
                        oracle_chunk_ids=[chunk.chunk_id], extra={"synth_fact": fact})
        out.append(base)
        for text in phrasings[1:]:
            key = hashlib.sha256(phrasing_key(text).encode("utf-8")).hexdigest()[:8]
            out.append(Question(id=f"{base.id}~{key}", question=text, answer=answer, category=base.category,
                                origin=base.origin, oracle_chunk_ids=[chunk.chunk_id],
                                extra={"synth_fact": fact, "fact": base.id, "phrasing_of": base.id}))
    return out, rejected
