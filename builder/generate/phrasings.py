"""More phrasings of each fact from the teacher: paraphrases, and reversals where the fact allows.

Knowledge sticks when a fact is met in many surface forms (Allen-Zhu & Li, Physics of LMs
3.1), including the reverse direction of the relation: a model trained on "which port does
the relay listen on? 7431" does not by itself answer "what listens on port 7431?"
(Berglund et al., the reversal curse). For every question item the user wrote, the teacher
is asked, with the fact and its source chunk, for ``raft.paraphrases`` other phrasings of the
same question and, with ``raft.reversals``, up to two questions that ask the relation the
other way round, each with its short answer. They become training phrasings like the
``paraphrases:`` of a question file: paraphrases share the item's fact, reversals are facts
of their own. Repeats, phrasings that point at "the document", and phrasings equal to a
held-out one are dropped and counted. Replies are cached like every teacher call, so a
rerun makes no call.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from builder.generate.plan import fact_of
from builder.generate.questions import Question, is_self_contained, phrasing_key
from rag.types import Chunk

PHRASING_PROMPT_VERSION = "phrasings-v1"
MAX_REVERSALS = 2


def phrasing_schema(n: int, reversals: bool) -> dict[str, Any]:
    props: dict[str, Any] = {
        "paraphrases": {"type": "array", "maxItems": max(n, 1), "items": {"type": "string", "minLength": 8}},
    }
    if reversals:
        props["reversals"] = {
            "type": "array", "maxItems": MAX_REVERSALS,
            "items": {"type": "object", "properties": {"question": {"type": "string", "minLength": 8},
                                                       "answer": {"type": "string", "minLength": 1}},
                      "required": ["question", "answer"]},
        }
    return {"type": "object", "properties": props, "required": ["paraphrases"]}


def phrasing_messages(q: Question, n: int, reversals: bool, source: Chunk | None) -> list[dict[str, str]]:
    system = (
        "You rewrite questions for training a domain assistant. Every question you write must be "
        "fully self-contained (name the product, command or setting), must never refer to 'the "
        "document', 'the passage' or 'the text', and must be answered by the same fact. Reply with "
        "JSON only."
    )
    fact = f"Question: {q.question}\nAnswer: {q.answer}" if q.answer else f"Question: {q.question}"
    doc = (f"\n\nThe fact comes from this document (from {source.source}, section '{source.heading}'):\n"
           f"<document>\n{source.text.strip()}\n</document>") if source is not None else ""
    ask = (f"Write {n} different phrasings of the question, as different users would ask it: vary the "
           "word order, the vocabulary, the length and the form (a question, an imperative, a user "
           "describing their task). Keep the meaning and the answer exactly the same.")
    if reversals and q.answer:
        ask += (f" Also write up to {MAX_REVERSALS} reversals: questions that ask the same relation the other "
                "way round, whose answer is something the original question names (for 'Which port does "
                "the relay listen on? 7431', a reversal is 'Which Kestrel KX-7 service listens on TCP port "
                "7431?' with the answer 'the sensor ingest listener'). Give each with its short answer, "
                "stated in the document. Write none when the fact has no sensible reverse.")
        shape = '{"paraphrases": ["..."], "reversals": [{"question": "...", "answer": "..."}]}'
    else:
        shape = '{"paraphrases": ["..."]}'
    user = f"{fact}{doc}\n\n{ask}\nReply as {shape}."
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def phrasings_from_reply(q: Question, data: dict[str, Any], n: int, taken: set[str],
                         held_out: set[str]) -> tuple[list[Question], dict[str, int]]:
    """Validated new Questions from one reply; ``taken`` (phrasing keys) grows with them."""
    out: list[Question] = []
    rejected: dict[str, int] = {}

    def reject(reason: str) -> None:
        rejected[reason] = rejected.get(reason, 0) + 1

    def usable(text: str) -> str | None:
        key = phrasing_key(text)
        if len(text) < 8:
            reject("phrasing_empty")
        elif not is_self_contained(text):
            reject("phrasing_not_self_contained")
        elif key in held_out:
            reject("phrasing_is_held_out")
        elif key in taken:
            reject("phrasing_duplicate")
        else:
            taken.add(key)
            return key
        return None

    fact = fact_of(q)
    for text in _strings(data.get("paraphrases"))[:n]:
        key = usable(text)
        if key is not None:
            out.append(Question(
                id=f"{q.id}~t{_h(key)}", question=text, answer=q.answer, category=q.category, origin=q.origin,
                oracle_chunk_ids=list(q.oracle_chunk_ids),
                extra={**q.extra, "fact": fact, "phrasing_of": q.id, "phrasing_source": "teacher"},
            ))
    for rev in (data.get("reversals") or [])[:MAX_REVERSALS] if q.answer else []:
        text = str(rev.get("question", "")).strip() if isinstance(rev, dict) else ""
        answer = str(rev.get("answer", "")).strip() if isinstance(rev, dict) else ""
        if not answer:
            reject("reversal_without_answer")
            continue
        key = usable(text)
        if key is not None:
            rid = f"{q.id}~r{_h(key)}"
            out.append(Question(
                id=rid, question=text, answer=answer, category=q.category, origin=q.origin,
                oracle_chunk_ids=list(q.oracle_chunk_ids),
                extra={**{k: v for k, v in q.extra.items() if k not in ("fact", "phrasing_of")},
                       "fact": rid, "reversal_of": q.id, "phrasing_source": "teacher"},
            ))
    return out, rejected


def expandable(questions: Iterable[Question]) -> list[Question]:
    """The items the teacher rephrases: answerable training items in their own wording."""
    # synthesized facts come with their phrasings already (one call per chunk wrote them)
    return [q for q in questions if not q.held_out and not q.unanswerable and not q.extra.get("fact")
            and not q.origin.startswith("synth:")]


def _strings(v: Any) -> list[str]:
    return [str(x).strip() for x in v if isinstance(x, str)] if isinstance(v, list) else []


def _h(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:8]


async def rephrase(runner: Any, qs: list[Question], held: list[Question], retriever: Any) -> list[Question]:
    """Ask the teacher for more phrasings of every item, through the generate runner (its
    semaphore, budget, progress, cache and summary); the new Questions, in the items' order."""
    from builder.generate.raft import normalize_answer

    raft = runner.cfg.raft
    items = expandable(qs)
    if not items:
        return []
    taken = {phrasing_key(q.question) for q in qs}
    held_keys = {phrasing_key(q.question) for q in [*qs, *held] if q.held_out}
    hits_all = retriever.search_many([f"{q.question} {q.answer or ''}" for q in items], k=5, mode="hybrid")
    by_id = {c.chunk_id: c for c in retriever.all_chunks()} if any(q.oracle_chunk_ids for q in items) else {}
    out: dict[str, Any] = {}  # item id -> the teacher's reply
    runner._progress_start(len(items), "phrasings")

    async def one(q: Question, hits: list[Any]) -> None:
        source = next((by_id[c] for c in q.oracle_chunk_ids if c in by_id), None)
        if source is None and hits:
            ans = normalize_answer(q.answer or "")
            source = next((c for c in hits if ans and ans in normalize_answer(c.text)), hits[0])
        reply = await runner.ask_once(
            "phrasings", phrasing_messages(q, raft.paraphrases, raft.reversals, source),
            phrasing_schema(raft.paraphrases, raft.reversals), PHRASING_PROMPT_VERSION,
            60 * (raft.paraphrases + 3) + 40, f"phrasings:{q.id}")
        if reply is not None:
            out[q.id] = reply

    try:
        await runner._all(one(q, list(h)) for q, h in zip(items, hits_all, strict=True))
    finally:
        runner._progress_stop()
    new: list[Question] = []
    for q in items:  # in the items' order, whatever the completion order: stable ids and dedup
        if q.id not in out:
            continue
        got, rejected = phrasings_from_reply(q, out[q.id].data, raft.paraphrases, taken, held_keys)
        for k, v in rejected.items():
            runner.s.drop(k, v)
        new += got
    runner.s.teacher_phrasings = sum(1 for q in new if "reversal_of" not in q.extra)
    runner.s.teacher_reversals = sum(1 for q in new if "reversal_of" in q.extra)
    return new
