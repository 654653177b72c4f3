"""Quality gates: verified quotes, near-duplicate removal, a chunk-disjoint eval split.

A quote counts only if it occurs, whitespace-normalized, in an oracle chunk: a teacher that
paraphrases or invents evidence produces a row that is regenerated or dropped. The eval split
is held out by source chunk (union of questions sharing any oracle chunk), so no fact seen in
training is scored as "held out"; the decontamination report says how close the splits are.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rag.prompting import extract_quotes, neutralise
from rag.types import Chunk

_TRIM = " \t\n\"'`“”‘’.,;:…"


def normalize_ws(text: str) -> str:
    return " ".join(text.split())


def _quote_forms(quote: str) -> list[str]:
    q = normalize_ws(quote)
    forms = [q]
    # a quote may drop the sentence's final period, or wrap itself in quote marks / ellipses
    stripped = q.strip(_TRIM)
    if stripped and stripped != q:
        forms.append(stripped)
    return forms


def quote_in_chunks(quote: str, chunks: Sequence[Chunk]) -> bool:
    forms = _quote_forms(quote)
    if not forms[-1]:
        return False
    for c in chunks:
        hay = normalize_ws(c.text)
        hay_n = normalize_ws(neutralise(c.text))  # what the teacher saw inside the fence
        if any(f and (f in hay or f in hay_n) for f in forms):
            return True
        # a quote that spans an ellipsis: every part must occur, in order
        parts = [p.strip(_TRIM) for p in re.split(r"\s*(?:\.\.\.|…)\s*", forms[0]) if p.strip(_TRIM)]
        if len(parts) > 1:
            pos = 0
            ok = True
            for p in parts:
                i = hay.find(p, pos)
                if i < 0:
                    ok = False
                    break
                pos = i + len(p)
            if ok:
                return True
    return False


@dataclass
class QuoteCheck:
    quotes: list[str]
    bad: list[str]

    @property
    def ok(self) -> bool:
        return bool(self.quotes) and not self.bad


def verify_quotes(text: str, oracle: Sequence[Chunk], begin: str, end: str) -> QuoteCheck:
    quotes = extract_quotes(text, begin, end)
    return QuoteCheck(quotes=quotes, bad=[q for q in quotes if not quote_in_chunks(q, oracle)])


# ---------------------------------------------------------------- near-duplicates


def near_duplicates(texts: Sequence[str], embed: Callable[[list[str]], Any], threshold: float) -> dict[int, tuple[int, float]]:
    """Indexes to drop -> (index kept, cosine). Greedy in input order: the first one stays.

    ``embed`` returns L2-normalized rows (Retriever.embed), so a dot product is the cosine.
    """
    import numpy as np

    if len(texts) < 2:
        return {}
    vecs = np.asarray(embed(list(texts)), dtype=np.float32)
    sims = vecs @ vecs.T
    kept: list[int] = []
    dropped: dict[int, tuple[int, float]] = {}
    for i in range(len(texts)):
        if kept:
            row = sims[i, kept]
            j = int(np.argmax(row))
            if float(row[j]) >= threshold:
                dropped[i] = (kept[j], float(row[j]))
                continue
        kept.append(i)
    return dropped


# ---------------------------------------------------------------- split


def _find(parent: dict[str, str], x: str) -> str:
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


def split_by_chunk(
    items: Sequence[tuple[str, Sequence[str]]],
    eval_fraction: float,
    seed: int = 0,
    force_train: set[str] | frozenset[str] = frozenset(),
) -> dict[str, str]:
    """item id -> "train" | "eval", with no oracle chunk's questions in both splits.

    Items sharing an oracle chunk form one group (union-find); groups are ordered by a seeded
    hash of their root key and taken into eval until ``eval_fraction`` of the items is
    reached. The decision depends only on the groups, not on input order. Groups holding an
    id in ``force_train`` (facts whose held-out paraphrases evaluate them) stay in train.
    """
    parent: dict[str, str] = {}
    for item_id, chunk_ids in items:
        keys = [f"c:{c}" for c in chunk_ids] or [f"i:{item_id}"]
        for k in keys:
            parent.setdefault(k, k)
        for k in keys[1:]:
            ra, rb = _find(parent, keys[0]), _find(parent, k)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    groups: dict[str, list[str]] = {}
    for item_id, chunk_ids in items:
        keys = [f"c:{c}" for c in chunk_ids] or [f"i:{item_id}"]
        groups.setdefault(_find(parent, keys[0]), []).append(item_id)
    n = len(items)
    target = round(n * eval_fraction)
    order = sorted(groups, key=lambda g: hashlib.sha256(f"{seed}:{g}".encode()).hexdigest())
    out: dict[str, str] = {}
    n_eval = 0
    for g in order:
        members = groups[g]
        if force_train.intersection(members):
            for m in members:
                out[m] = "train"
            continue
        # take a group into eval while it brings us closer to the target
        if n_eval < target and abs(target - (n_eval + len(members))) <= abs(target - n_eval):
            split = "eval"
            n_eval += len(members)
        else:
            split = "train"
        for m in members:
            out[m] = split
    return out


def split_by_phrasing(
    items: Sequence[tuple[str, str]],
    eval_fraction: float,
    seed: int = 0,
) -> dict[str, str]:
    """item id -> "train" | "eval", holding out phrasings of facts that stay trained.

    ``items`` are (item id, fact id) pairs. A fact with two or more phrasings may give one
    of them (never its first, the user's own wording) to eval: ``eval_fraction`` of those
    facts do, picked by a seeded hash, so the choice is stable across runs. Every fact keeps
    at least one training phrasing; a fact with a single phrasing is always trained on.
    """
    by_fact: dict[str, list[str]] = {}
    for item_id, fact in items:
        by_fact.setdefault(fact, []).append(item_id)
    out = {item_id: "train" for item_id, _ in items}
    several = sorted((f for f, ids in by_fact.items() if len(ids) >= 2),
                     key=lambda f: hashlib.sha256(f"{seed}:fact:{f}".encode()).hexdigest())
    for fact in several[: round(len(several) * eval_fraction)]:
        rest = by_fact[fact][1:]
        pick = min(rest, key=lambda i: hashlib.sha256(f"{seed}:phrasing:{i}".encode()).hexdigest())
        out[pick] = "eval"
    return out


@dataclass
class DecontaminationReport:
    train: int = 0
    eval: int = 0
    shared_oracle_chunks: int = 0
    exact_question_overlap: int = 0
    eval_oracles_in_train_context: int = 0
    max_cosine: float | None = None
    eval_near_train: int = 0  # eval questions with cosine >= threshold to some train question
    threshold: float = 0.0
    closest: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def decontamination_report(
    rows: Sequence[dict[str, Any]],
    embed: Callable[[list[str]], Any] | None,
    threshold: float,
) -> DecontaminationReport:
    """Overlap between train and eval rows (the training-row format of docs/architecture.md, meta.split set)."""
    train = [r["meta"] for r in rows if r["meta"]["split"] == "train"]
    ev = [r["meta"] for r in rows if r["meta"]["split"] == "eval"]
    rep = DecontaminationReport(train=len(train), eval=len(ev), threshold=threshold)
    train_oracles = {c for m in train for c in m["oracle_chunk_ids"]}
    eval_oracles = {c for m in ev for c in m["oracle_chunk_ids"]}
    rep.shared_oracle_chunks = len(train_oracles & eval_oracles)
    train_q = {normalize_ws(m["question"]).casefold() for m in train}
    rep.exact_question_overlap = sum(normalize_ws(m["question"]).casefold() in train_q for m in ev)
    train_ctx = {c for m in train for c in m["distractor_chunk_ids"]} | train_oracles
    rep.eval_oracles_in_train_context = len(eval_oracles & train_ctx)
    if embed is not None and train and ev:
        import numpy as np

        tv = np.asarray(embed([m["question"] for m in train]), dtype=np.float32)
        evv = np.asarray(embed([m["question"] for m in ev]), dtype=np.float32)
        sims = evv @ tv.T
        best = sims.max(axis=1)
        arg = sims.argmax(axis=1)
        rep.max_cosine = round(float(best.max()), 4)
        rep.eval_near_train = int((best >= threshold).sum())
        for i in np.argsort(-best)[:3]:
            rep.closest.append(
                {"eval_id": ev[i]["id"], "train_id": train[int(arg[i])]["id"], "cosine": round(float(best[i]), 4)}
            )
    return rep
