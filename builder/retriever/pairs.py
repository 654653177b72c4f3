"""RAFT rows -> contrastive training pairs and eval queries for the embedder.

Every RAFT row names its question, its oracle chunk(s) and the distractor chunks retrieval
ranked below the oracle: a (question, positive, hard negatives) triple. Closed-book rows repeat
the question of a RAFT row and refusal rows have no oracle, so one question gives one pair.

Nothing held out is trained on: only ``split: train`` rows, and never a phrasing that is also
an eval row or a question of a held-out file (``holdout: true`` or an item marked held out),
even when an older training file still holds it.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.generate.jsonl import read_rows
from builder.generate.plan import holdout_questions
from builder.generate.questions import load_questions, phrasing_key
from rag.config import Workspace
from rag.errors import ConfigError, TrainingError
from rag.retrieve import chunk_embed_text, stored_contexts
from rag.types import Chunk

__all__ = ["Pair", "PairSet", "Query", "chunk_embed_text", "held_out_phrasings", "load_pairs", "stored_contexts"]


@dataclass
class Pair:
    """One training question with the chunk that answers it and chunks that do not."""

    question_id: str
    question: str
    positive: str  # chunk text as the index embeds it
    negatives: list[str] = field(default_factory=list)


@dataclass
class Query:
    """One eval question and the chunk ids that count as finding it."""

    question_id: str
    question: str
    oracle_chunk_ids: list[str]
    oracle_sources: list[str] = field(default_factory=list)  # for document-level recall


@dataclass
class PairSet:
    pairs: list[Pair]
    eval_queries: list[Query]
    train_file: str
    eval_file: str | None
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str, n: int = 1) -> None:
        if n:
            self.skipped[reason] = self.skipped.get(reason, 0) + n


def held_out_phrasings(ws: Workspace) -> set[str]:
    """Phrasing keys of every held-out question the workspace knows (files named by
    raft.questions and every domain_questions/ file marked ``holdout: true``)."""
    from builder.generate.questions import question_files

    try:
        files = question_files([ws.path(p) for p in ws.config.raft.questions])
    except ConfigError:
        files = []  # a missing question file: generate reports it; the held-out folder still counts
    loaded = load_questions(files) if files else []
    held = [q for q in loaded if q.held_out] + holdout_questions(ws, loaded)
    return {phrasing_key(q.question) for q in held}


def _is_pairable(meta: dict[str, Any]) -> bool:
    return not (meta.get("closed_book") or meta.get("refusal"))


def _row_metas(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r["meta"] for r in rows if isinstance(r, dict) and isinstance(r.get("meta"), dict)]


def load_pairs(ws: Workspace, chunks: Sequence[Chunk], *, train_file: str | Path | None = None,
               eval_file: str | Path | None = None, hard_negatives: int = 1, seed: int = 0,
               contexts: dict[str, str] | None = None) -> PairSet:
    """Read the training (and eval) JSONL and resolve chunk ids against the index's chunks
    (``contexts``: the stored document context per chunk id, see :func:`stored_contexts`)."""
    ctx = contexts or {}

    def text_of(c: Chunk) -> str:
        return chunk_embed_text(c, ctx.get(c.chunk_id, ""))

    name = ws.config.corpus.name
    tpath = ws.path(train_file) if train_file else ws.training_dir / f"{name}.train.jsonl"
    default_eval = ws.training_dir / f"{name}.eval.jsonl"
    epath = ws.path(eval_file) if eval_file else (default_eval if default_eval.is_file() else None)
    if not tpath.is_file():
        raise TrainingError(f"Training file {tpath} does not exist. Run 'raftsmith generate' first "
                            "(or pass --train-file).")
    if epath is not None and not epath.is_file():
        raise TrainingError(f"Eval file {epath} does not exist; fix --eval-file or leave it out.")
    by_id = {c.chunk_id: c for c in chunks}
    held = held_out_phrasings(ws)
    train_metas = _row_metas(read_rows(tpath))
    eval_metas = _row_metas(read_rows(epath)) if epath is not None else []
    # eval rows in the training file (a hand-made file, an older generate) are eval rows too
    eval_metas += [m for m in train_metas if m.get("split") == "eval"]
    out = PairSet(pairs=[], eval_queries=[], train_file=str(tpath), eval_file=str(epath) if epath else None)

    seen_eval: set[str] = set()
    for m in eval_metas:
        q = str(m.get("question") or "")
        key = phrasing_key(q)
        oracle = [cid for cid in m.get("oracle_chunk_ids") or [] if cid in by_id]
        if not q or not oracle or key in seen_eval:
            continue
        seen_eval.add(key)
        out.eval_queries.append(Query(str(m.get("id")), q, oracle))
    held_or_eval = held | {phrasing_key(str(m.get("question") or "")) for m in eval_metas}

    seen: set[str] = set()
    for m in train_metas:
        q = str(m.get("question") or "")
        key = phrasing_key(q)
        if m.get("split") != "train":
            continue
        if key in held_or_eval:
            out.skip("held_out_or_eval")
            continue
        if not _is_pairable(m) or key in seen:
            continue
        oracle = [by_id[c] for c in m.get("oracle_chunk_ids") or [] if c in by_id]
        if not oracle:
            out.skip("no_oracle_chunk" if not m.get("oracle_chunk_ids") else "oracle_not_in_index")
            continue
        seen.add(key)
        sources = {c.source for c in oracle}
        # a distractor from the oracle's own document is often relevant too: not a negative
        negs = [by_id[c] for c in m.get("distractor_chunk_ids") or [] if c in by_id and by_id[c].source not in sources]
        negs = negs[:hard_negatives]
        if len(negs) < hard_negatives:  # every pair needs as many negatives: fill with random ones
            rng = random.Random(f"{seed}:{m.get('id')}")
            others = [c for c in chunks if c.source not in sources and c not in negs]
            negs += rng.sample(others, min(hard_negatives - len(negs), len(others)))
        if len(negs) < hard_negatives:
            out.skip("too_few_negatives")
            continue
        out.pairs.append(Pair(str(m.get("id")), q, text_of(oracle[0]), [text_of(c) for c in negs]))
    if not out.pairs:
        why = ", ".join(f"{k}: {v}" for k, v in sorted(out.skipped.items())) or "no train rows"
        raise TrainingError(
            f"No training pairs in {tpath} ({why}). train-retriever needs train rows whose question has an "
            "oracle chunk in the index: run 'raftsmith generate' over questions with answers in the documents, "
            "and 'raftsmith ingest' before it if the documents changed."
        )
    return out
