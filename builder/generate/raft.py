"""RAFT assembly (Zhang et al., arXiv 2403.10131): oracle + distractor contexts.

For each question the *oracle* is the chunk that answers it (the chunk a question was
synthesized from, or the top retrieval hit for a question-file item). The context shown to
the student is the oracle plus distractors (hard negatives: retrieval hits ranked below the
oracle; plus random chunks), in shuffled order; with probability ``1 - p_oracle`` the oracle
is left out and the answer is still the oracle's, which teaches the student to use the
context when it helps and to know the domain when it does not. Every random choice comes
from an RNG seeded by (seed, item id) so reruns and resumes build identical rows.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rag.prompting import ANSWER_MARK, build_messages
from rag.types import Chunk


@dataclass
class RaftContext:
    oracle: list[Chunk]
    distractors: list[Chunk]
    has_oracle: bool
    documents: list[Chunk]  # what the student sees, in order

    def doc_number(self, chunk_id: str) -> int | None:
        for i, c in enumerate(self.documents, start=1):
            if c.chunk_id == chunk_id:
                return i
        return None


@dataclass
class RaftItem:
    """A planned training row: question, split and its context, before any answer exists."""

    id: str
    question: str
    answer: str | None
    category: str
    split: str
    context: RaftContext
    origin: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def item_rng(seed: int, item_id: str) -> random.Random:
    # str seeds hash with SHA-512 inside random.seed: stable across processes and PYTHONHASHSEED.
    return random.Random(f"raft:{seed}:{item_id}")


def sample_context(
    item_id: str,
    oracle: Sequence[Chunk],
    hard_negatives: Sequence[Chunk],
    pool: Sequence[Chunk],
    *,
    n_distractors: int,
    p_oracle: float,
    seed: int = 0,
    hard_fraction: float = 0.5,
) -> RaftContext:
    """Pick distractors and decide on the oracle for one item, deterministically per id.

    About ``hard_fraction`` of the distractors are hard negatives (in retrieval order), the
    rest random chunks from ``pool``; when one source runs short the other fills in.
    """
    rng = item_rng(seed, item_id)
    # the oracle coin is the first draw, so it does not depend on the pool's size
    has_oracle = bool(oracle) and rng.random() < p_oracle
    oracle_ids = {c.chunk_id for c in oracle}
    chosen: list[Chunk] = []
    taken = set(oracle_ids)
    n_hard = min(n_distractors, round(n_distractors * hard_fraction + 1e-9))
    for c in hard_negatives:
        if len(chosen) >= n_hard:
            break
        if c.chunk_id not in taken:
            chosen.append(c)
            taken.add(c.chunk_id)
    rest = [c for c in pool if c.chunk_id not in taken]
    rng.shuffle(rest)
    need = n_distractors - len(chosen)
    chosen.extend(rest[:need])
    taken.update(c.chunk_id for c in rest[:need])
    if len(chosen) < n_distractors:  # pool too small: take more hard negatives
        for c in hard_negatives:
            if len(chosen) >= n_distractors:
                break
            if c.chunk_id not in taken:
                chosen.append(c)
                taken.add(c.chunk_id)
    docs = [*oracle, *chosen] if has_oracle else list(chosen)
    rng.shuffle(docs)
    return RaftContext(oracle=list(oracle), distractors=chosen, has_oracle=has_oracle, documents=docs)


def hard_negatives_below(hits: Sequence[Chunk], oracle_ids: set[str]) -> list[Chunk]:
    """Retrieval hits ranked below the (last) oracle hit; all non-oracle hits if it is absent."""
    last = -1
    for i, c in enumerate(hits):
        if c.chunk_id in oracle_ids:
            last = i
    return [c for c in hits[last + 1:] if c.chunk_id not in oracle_ids]


# ---------------------------------------------------------------- reference answers

_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9`(\"'])")
_BULLET = re.compile(r"^\s*(?:[-*+]|\d+[.)]|#+)\s+")


def sentences(text: str) -> list[str]:
    """Sentence-ish units of a chunk: lines first (tables, bullets), then sentence ends.

    Each unit is a verbatim substring of ``text`` modulo whitespace, so it verifies as a quote.
    """
    out: list[str] = []
    for para in re.split(r"\n\s*\n", text):
        lines = para.split("\n")
        # join wrapped prose lines; keep table rows and bullets as their own units
        buf: list[str] = []
        units: list[str] = []
        for ln in lines:
            s = ln.strip()
            if not s:
                continue
            if s.startswith("|") or _BULLET.match(ln) or s.startswith(("```", "    ")):
                if buf:
                    units.append(" ".join(buf))
                    buf = []
                units.append(s)
            else:
                buf.append(s)
        if buf:
            units.append(" ".join(buf))
        for u in units:
            u = _BULLET.sub("", u).strip()
            out.extend(p.strip() for p in _SENT_SPLIT.split(u) if p.strip())
    return out


def normalize_answer(s: str) -> str:
    """Casefolded, code ticks and emphasis removed, whitespace collapsed: for containment tests."""
    return " ".join(s.casefold().replace("`", "").replace("**", "").split())


_norm = normalize_answer


def _words(s: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9][a-z0-9._/-]*", s.casefold()) if len(w) > 2}


def supporting_sentence(answer: str, question: str, chunks: Sequence[Chunk]) -> tuple[Chunk, str] | None:
    """The oracle sentence that contains the reference answer (best overlap with the question)."""
    ans = _norm(answer)
    if not ans:
        return None
    qwords = _words(question)
    best: tuple[float, Chunk, str] | None = None
    for c in chunks:
        for s in sentences(c.text):
            if ans not in _norm(s):
                continue
            score = len(qwords & _words(s)) - 0.002 * len(s)
            if best is None or score > best[0]:
                best = (score, c, s)
    return None if best is None else (best[1], best[2])


def reference_completion(
    question: str,
    answer: str,
    ctx: RaftContext,
    *,
    cot: bool = True,
    quote_begin: str,
    quote_end: str,
) -> tuple[str, list[str]]:
    """Assistant text for --teacher none: quote the supporting oracle sentence, cite it, answer.

    Returns (content, quotes). Without the oracle in context (RAFT's 1-p case) the answer is
    still given, without a quote or citation that would point at the wrong document.
    """
    quotes: list[str] = []
    lines: list[str] = []
    if cot and ctx.has_oracle:
        found = supporting_sentence(answer, question, ctx.oracle)
        if found is not None:
            chunk, sent = found
            n = ctx.doc_number(chunk.chunk_id)
            sent = " ".join(sent.split())  # table rows carry column padding; quotes verify modulo whitespace
            quotes.append(sent)
            lines.append(f"{quote_begin}{sent}{quote_end} [{n}]")
    lines.append(f"{ANSWER_MARK} {answer}")
    return "\n".join(lines), quotes


def closed_book_reply(answer: str) -> str:
    """The reply of a closed-book row: the fact, on the answer line that answering reads."""
    return f"{ANSWER_MARK} {answer.strip()}"


def build_row(item: RaftItem, assistant: str, meta: dict[str, Any]) -> dict[str, Any]:
    """The training row (docs/architecture.md); the prompt comes from rag.prompting, like answering."""
    messages = build_messages(item.question, item.context.documents)
    messages.append({"role": "assistant", "content": assistant})
    return {"messages": messages, "meta": meta}
