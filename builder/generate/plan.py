"""Planning a generation run: questions -> oracle, split, RAFT context, before any teacher call.

Everything here is deterministic for a given index, question set and seed, so a resumed run
plans exactly the same rows and skips the finished ones by id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from builder.generate.quality import near_duplicates, split_by_chunk, split_by_phrasing
from builder.generate.questions import Question, load_question_file, phrasing_key
from builder.generate.raft import (
    RaftContext,
    RaftItem,
    hard_negatives_below,
    item_rng,
    normalize_answer,
    sample_context,
)
from rag.config import RaftConfig, Workspace
from rag.errors import ConfigError
from rag.types import Chunk


@dataclass
class Plan:
    items: list[RaftItem] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    duplicates: list[dict[str, Any]] = field(default_factory=list)

    def drop(self, reason: str, n: int = 1) -> None:
        if n:
            self.dropped[reason] = self.dropped.get(reason, 0) + n


def _contains(answer: str, text: str) -> bool:
    return normalize_answer(answer) in normalize_answer(text)


def _answer_oracle(q: Question, hits: Sequence[Chunk], chunks: Sequence[Chunk]) -> list[Chunk]:
    """With a reference answer, the oracle is the best-ranked chunk that contains it.

    The top hit alone is often a neighbouring section (a summary table, an overview); the
    retrieval hits are searched first, then the whole corpus by word overlap with the question.
    """
    if not q.answer:
        return []
    for c in hits:
        if _contains(q.answer, c.text):
            return [c]
    qwords = set(normalize_answer(q.question).split())
    best = [(len(qwords & set(normalize_answer(c.text).split())), i) for i, c in enumerate(chunks) if _contains(q.answer, c.text)]
    if not best:
        return []
    return [chunks[max(best)[1]]]


def plan_items(
    questions: Sequence[Question],
    retriever: Any,
    raft: RaftConfig,
    *,
    need_reference: bool,
    limit: int | None = None,
    search_mode: str = "hybrid",
) -> Plan:
    """Turn questions into RaftItems: filter, find oracles, dedup, split, sample contexts."""
    plan = Plan()
    usable: list[Question] = []
    refusals: list[Question] = []
    for q in questions:
        if q.held_out:
            plan.drop("held_out")
        elif q.unanswerable:
            if raft.refusal_rows:
                refusals.append(q)
            else:
                plan.drop("unanswerable")
        elif need_reference and not q.answer:
            plan.drop("no_reference_answer")
        else:
            usable.append(q)
    if not usable:
        if limit is not None:
            plan.drop("over_limit", max(len(refusals) - limit, 0))
            refusals = refusals[:limit]
        _plan_refusals(plan, refusals, retriever, raft, search_mode, exclude=set())
        return plan

    chunks = retriever.all_chunks()
    by_id = {c.chunk_id: c for c in chunks}
    depth = max(2 * raft.n_distractors + 2, 8)
    hits_all = retriever.search_many([q.question for q in usable], k=depth, mode=search_mode)

    oracles: dict[str, list[Chunk]] = {}
    hits_by_q: dict[str, list[Chunk]] = {}
    kept: list[Question] = []
    for q, hits in zip(usable, hits_all, strict=True):
        if q.oracle_chunk_ids:
            oracle = [by_id[c] for c in q.oracle_chunk_ids if c in by_id]
        else:
            oracle = _answer_oracle(q, hits, chunks) or hits[:1]
        if not oracle:
            plan.drop("no_oracle_chunk")
            continue
        oracles[q.id] = oracle
        hits_by_q[q.id] = list(hits)
        kept.append(q)

    dups = near_duplicates([q.question for q in kept], retriever.embed, raft.dedup_threshold)
    for i, (j, cos) in sorted(dups.items()):
        plan.drop("near_duplicate")
        plan.duplicates.append({"dropped": kept[i].id, "kept": kept[j].id, "cosine": round(cos, 4)})
    kept = [q for i, q in enumerate(kept) if i not in dups]
    if limit is not None:
        plan.drop("over_limit", max(len(kept) - limit, 0) + max(len(refusals) - max(limit - len(kept), 0), 0))
        kept = kept[:limit]
        refusals = refusals[: limit - len(kept)]

    splits = _splits(questions, kept, oracles, raft)
    # 'facts' mode: eval oracles are unseen in training
    eval_oracles = ({c.chunk_id for q in kept if splits[q.id] == "eval" for c in oracles[q.id]}
                    if raft.eval_split == "facts" else set())
    # train contexts never show an eval oracle, so no held-out fact leaks into training
    train_pool = [c for c in chunks if c.chunk_id not in eval_oracles]
    for q in kept:
        oracle = oracles[q.id]
        oracle_ids = {c.chunk_id for c in oracle}
        split = splits[q.id]
        hard = hard_negatives_below(hits_by_q[q.id], oracle_ids)
        pool = chunks
        if split == "train":
            hard = [c for c in hard if c.chunk_id not in eval_oracles]
            pool = train_pool
        ctx = sample_context(
            q.id, oracle, hard, pool, n_distractors=raft.n_distractors, p_oracle=raft.p_oracle, seed=raft.seed
        )
        extra = dict(q.extra)
        if raft.no_oracle == "refuse" and split == "train" and not ctx.has_oracle:
            extra["refusal"] = True  # the documents shown lack the answer: the row teaches the refusal
        raft_row = not (raft.rag_rows == "first_phrasing" and split == "train" and q.extra.get("fact"))
        if raft_row:
            plan.items.append(
                RaftItem(
                    id=q.id,
                    question=q.question,
                    answer=q.answer,
                    category=q.category,
                    split=split,
                    context=ctx,
                    origin=q.origin,
                    extra=extra,
                )
            )
        if split == "train" and _coin(raft.seed, f"closed:{q.id}") < raft.closed_book:
            # the same question with no documents, answered with the fact: knowledge the
            # model keeps without retrieval (ask --no-rag, or retrieval that finds nothing)
            plan.items.append(RaftItem(
                id=f"{q.id}{CLOSED_BOOK_SUFFIX}", question=q.question, answer=q.answer, category=q.category,
                split="train", context=RaftContext(oracle=oracle, distractors=[], has_oracle=False, documents=[]),
                origin=q.origin, extra={**q.extra, "closed_book_of": q.id},
            ))
    _plan_refusals(plan, refusals, retriever, raft, search_mode, exclude=eval_oracles)
    return plan


CLOSED_BOOK_SUFFIX = "#closed"


def _coin(seed: int, key: str) -> float:
    return item_rng(seed, key).random()


def fact_of(q: Question | RaftItem) -> str:
    """The fact a phrasing asks for: its item's id for a paraphrase, else its own."""
    return str(q.extra.get("fact") or q.id)


def _splits(questions: Sequence[Question], kept: Sequence[Question], oracles: dict[str, list[Chunk]],
            raft: RaftConfig) -> dict[str, str]:
    """train/eval per kept question, by ``raft.eval_split``.

    phrasings (default): every fact is trained on; some facts' extra phrasings are held out,
    which measures knowledge of trained facts asked in new words (closed book too).
    facts: whole oracle chunks and all their questions are held out, which measures reading
    unseen facts with RAG. none: everything is trained on.
    """
    if raft.eval_split == "none":
        return {q.id: "train" for q in kept}
    if raft.eval_split == "phrasings":
        return split_by_phrasing([(q.id, fact_of(q)) for q in kept], raft.eval_fraction, raft.seed)
    # facts with held-out paraphrases are trained on: the paraphrase set is their evaluation
    paraphrased = {str(q.extra["paraphrase_of"]) for q in questions if q.extra.get("paraphrase_of")}
    return split_by_chunk(
        [(q.id, [c.chunk_id for c in oracles[q.id]]) for q in kept], raft.eval_fraction, raft.seed, force_train=paraphrased
    )


def _plan_refusals(plan: Plan, refusals: Sequence[Question], retriever: Any, raft: RaftConfig, search_mode: str,
                   exclude: set[str]) -> None:
    """Rows for unanswerable questions: the chunks retrieval brings for them (as many documents
    as an answerable row shows), none of which holds the answer, and a refusal to answer.

    They go to the train split and never show an eval oracle.
    """
    if not refusals:
        return
    n_docs = raft.n_distractors + 1
    hits_all = retriever.search_many([q.question for q in refusals], k=n_docs + len(exclude), mode=search_mode)
    for q, hits in zip(refusals, hits_all, strict=True):
        docs = [c for c in hits if c.chunk_id not in exclude][:n_docs]
        ctx = RaftContext(oracle=[], distractors=docs, has_oracle=False, documents=docs)
        plan.items.append(RaftItem(id=q.id, question=q.question, answer=None, category=q.category, split="train",
                                   context=ctx, origin=q.origin, extra={**q.extra, "refusal": True}))


# ---------------------------------------------------------------- held-out phrasings and the split


def holdout_questions(ws: Workspace, loaded: Sequence[Question]) -> list[Question]:
    """Held-out question files in the workspace's domain_questions/ that this run did not load
    (raft.questions may name only the training files): their phrasings must not be trained on."""
    seen = {q.origin for q in loaded}
    out: list[Question] = []
    for f in sorted((ws.root / "domain_questions").glob("*.y*ml")):
        if str(f) in seen:
            continue
        try:
            qs = load_question_file(f)
        except ConfigError:
            continue  # not ours to judge here: a broken file that generate was not asked to read
        out += [q for q in qs if q.held_out]
    return out


def check_no_heldout_collision(items: Sequence[RaftItem], questions: Sequence[Question]) -> None:
    """A phrasing trained on cannot measure knowledge: refuse one that is also held out."""
    held = {phrasing_key(q.question): q for q in questions if q.held_out}
    for it in items:
        q = held.get(phrasing_key(it.question))
        if it.split == "train" and q is not None:
            raise ConfigError(
                f"The training question '{it.question}' ({it.id}, {it.origin}) is also held out for evaluation "
                f"as {q.id} ({q.origin}). A phrasing that is trained on cannot measure what the model learned: "
                "reword or remove one of the two, then rerun generate (finished rows are kept)."
            )


def split_manifest(items: Sequence[RaftItem], raft: RaftConfig) -> dict[str, Any]:
    """What the eval split holds out and why, for the summary and <corpus>.split.json."""
    rows = [it for it in items if not it.extra.get("closed_book_of")]
    facts: dict[str, set[str]] = {}
    for it in rows:
        if it.answer is not None:
            facts.setdefault(fact_of(it), set()).add(it.split)
    return {
        "eval_split": raft.eval_split, "eval_fraction": raft.eval_fraction, "seed": raft.seed,
        "closed_book_share": raft.closed_book,
        "facts": len(facts),
        "facts_trained": sum("train" in s for s in facts.values()),
        "facts_with_eval_phrasing": sum("eval" in s for s in facts.values()),
        "facts_withheld": sum(s == {"eval"} for s in facts.values()),
        "rows": {"raft_train": sum(it.split == "train" and not it.extra.get("refusal") for it in rows),
                 "refusal": sum(bool(it.extra.get("refusal")) for it in rows),
                 "closed_book": sum(bool(it.extra.get("closed_book_of")) for it in items),
                 "eval": sum(it.split == "eval" for it in rows)},
        "eval_ids": sorted(it.id for it in rows if it.split == "eval"),
    }
