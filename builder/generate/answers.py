"""Teacher prompts for answers and how a teacher's reply becomes a training row.

The teacher sees the row's documents (numbered as the student will see them) and a hint
naming the oracle; it writes reasoning that quotes the oracle between the quote markers and a
short answer. Quotes are verified against the oracle before a row exists.
"""

from __future__ import annotations

from typing import Any

from builder.generate.quality import verify_quotes
from builder.generate.raft import RaftItem
from rag.prompting import ANSWER_MARK, format_documents


def answer_schema(cot: bool) -> dict[str, Any]:
    props: dict[str, Any] = {"answer": {"type": "string", "minLength": 1}}
    if cot:
        props = {"reasoning": {"type": "string", "minLength": 1}, **props}
    return {"type": "object", "properties": props, "required": list(props)}


def answer_messages(item: RaftItem, cot: bool, qb: str, qe: str) -> list[dict[str, str]]:
    ctx = item.context
    docs = ctx.documents if ctx.has_oracle else ctx.oracle
    oracle_nums = [i for i, c in enumerate(docs, 1) if c.chunk_id in {o.chunk_id for o in ctx.oracle}]
    if cot:
        system = (
            "You write model answers for training a domain assistant. Use only the documents. "
            "In 'reasoning' explain in two to four sentences how the documents answer the question, "
            f"copying every sentence you rely on word for word between {qb} and {qe} and citing it "
            "as [n] with its document number. In 'answer' give only the short final answer. Reply with JSON."
        )
    else:
        system = "You answer questions from the given documents. Reply with JSON: {\"answer\": short final answer}."
    hint = f"\nThe answer is in document {', '.join(f'[{n}]' for n in oracle_nums)}." if oracle_nums else ""
    user = f"{format_documents(docs)}\n\nQuestion: {item.question.strip()}{hint}"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def compose_teacher_row(item: RaftItem, data: dict[str, Any], cot: bool, qb: str, qe: str) -> tuple[str, str, bool, str | None]:
    """(assistant content, answer, quotes verified, drop reason or None) from a teacher reply."""
    answer = " ".join(str(data.get("answer", "")).split())
    if answer.startswith(ANSWER_MARK):
        answer = answer[len(ANSWER_MARK):].strip()
    if not answer:
        return "", "", False, "empty_answer"
    if not cot:
        return f"{ANSWER_MARK} {answer}", answer, False, None
    reasoning = str(data.get("reasoning", "")).replace(ANSWER_MARK, "").strip()
    check = verify_quotes(reasoning, item.context.oracle, qb, qe)
    if not check.quotes:
        return "", answer, False, "no_quotes"
    if check.bad:
        return "", answer, False, "unverified_quote"
    if not item.context.has_oracle:
        # RAFT's (1-p) rows: the answer stays, but no citation can point at an absent document
        return f"{ANSWER_MARK} {answer}", answer, True, None
    return f"{reasoning}\n{ANSWER_MARK} {answer}", answer, True, None
