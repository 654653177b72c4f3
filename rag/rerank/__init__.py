"""The rerank stage: reorder first-stage candidates by a query-passage relevance model.

``chat.rerank`` picks the backend (:data:`rag.config.RERANK_NAMES`): a sentence-transformers
CrossEncoder (:mod:`rag.rerank.cross_encoder`) or the local llama.cpp model judging relevance
from its next-token logprobs (:mod:`rag.rerank.llm_judge`). Both are built by
:func:`make_reranker`, which imports the heavy library only for the backend asked for, so a
BM25-only laptop never loads torch.

:func:`rerank` is the pure part: scores in, a reordered top-k out, ties kept in first-stage
order; each chunk keeps its first-stage rank and score in ``meta``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Protocol

from rag.config import RERANK_NAMES
from rag.errors import ConfigError
from rag.types import Chunk

if TYPE_CHECKING:
    from rag.config import Workspace

__all__ = ["RERANKERS", "Reranker", "make_reranker", "rerank"]


class Reranker(Protocol):
    name: str  # "cross-encoder" | "llm"
    model_label: str  # what was loaded, for reports and the audit log

    def score(self, query: str, chunks: Sequence[Chunk]) -> list[float]:
        """One relevance score per chunk, higher = more relevant (comparable within one query)."""
        ...


def rerank(reranker: Reranker, query: str, chunks: Sequence[Chunk], k: int) -> list[Chunk]:
    """The ``k`` best of ``chunks`` by the reranker's score, as copies.

    Each copy's ``score`` is the rerank score; ``meta`` gains ``rerank_score``,
    ``retrieval_rank`` (1-based first-stage position) and ``retrieval_score``. Equal scores keep
    their first-stage order, so a reranker that cannot tell passages apart changes nothing.
    """
    if k < 1:
        raise ConfigError("k must be at least 1.")
    if not chunks:
        return []
    scores = reranker.score(query, chunks)
    if len(scores) != len(chunks):
        raise ValueError(f"reranker {reranker.name} returned {len(scores)} scores for {len(chunks)} chunks")
    order = sorted(range(len(chunks)), key=lambda i: (-scores[i], i))
    out: list[Chunk] = []
    for i in order[:k]:
        c = chunks[i]
        meta = {**c.meta, "rerank_score": round(float(scores[i]), 6), "retrieval_rank": i + 1,
                "retrieval_score": c.score}
        out.append(replace(c, score=float(scores[i]), meta=meta))
    return out


def _cross_encoder(ws: Workspace) -> Reranker:
    from rag.rerank.cross_encoder import load_cross_encoder

    cfg = ws.config.chat
    if not cfg.rerank_model:
        raise ConfigError(
            "chat.rerank is 'cross-encoder' but chat.rerank_model is not set; set it to a local CrossEncoder "
            "folder or a hub id in the Hugging Face cache (e.g. cross-encoder/ms-marco-MiniLM-L6-v2), "
            "or set chat.rerank: off."
        )
    return load_cross_encoder(cfg.rerank_model, ws.root, device=ws.config.embedding.device)


def _llm(ws: Workspace) -> Reranker:
    from rag.rerank.llm_judge import load_llm_reranker

    return load_llm_reranker(ws, ws.config.chat.rerank_model or "base")


#: chat.rerank name -> builder (the "off" entry of RERANK_NAMES builds nothing)
RERANKERS: dict[str, Callable[[Workspace], Reranker]] = {"cross-encoder": _cross_encoder, "llm": _llm}


def make_reranker(ws: Workspace, name: str | None = None) -> Reranker | None:
    """The reranker ``name`` (default: chat.rerank) for this workspace; None when it is 'off'."""
    name = ws.config.chat.rerank if name is None else name
    if name == "off":
        return None
    builder = RERANKERS.get(name)
    if builder is None:
        raise ConfigError(f"Unknown reranker '{name}'; use one of: {', '.join(RERANK_NAMES)} (chat.rerank).")
    return builder(ws)
