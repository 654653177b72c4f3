"""Answer one question: retrieve, fence, fit the context, generate, cite, audit.

Used by ``raftsmith ask``, the chat REPL, ``raftsmith serve`` and ``raftsmith eval``. The
prompt comes from :mod:`rag.prompting` (the format the model was trained on). Three rules:

* nothing relevant retrieved (best dense cosine below ``chat.min_score``) -> say so, no guess;
* the prompt never overflows the model's context: the oldest chat turns, then the
  lowest-ranked chunks are dropped, and the result reports how many;
* the audit log must be writable before any work and must take the record afterwards, or
  no answer is returned (fail closed).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from rag.audit import AuditLog
from rag.config import Workspace
from rag.errors import BackendError, ConfigError, RaftsmithError
from rag.llm.base import ChatBackend, Message
from rag.llm.resolve import ModelRef, resolve_model
from rag.prompting import ANSWER_MARK, build_messages, cited_numbers, extract_answer, extract_quotes
from rag.types import Chunk

NO_CONTEXT = ("I don't know: nothing in the indexed documents is relevant to this question, so I will not guess. "
              "Try rephrasing it, or ingest the documents that cover it ('raftsmith ingest').")
SAFETY_MARGIN = 16  # tokens kept free besides max_tokens (template/BOS differences)


@dataclass
class AnswerResult:
    answer: str
    model: str
    backend: str
    citations: list[Chunk]
    latency_ms: float
    raw: str
    refused: bool = False
    rag: bool = True
    retrieved: list[Chunk] = field(default_factory=list)  # the chunks that went into the prompt
    dropped_chunks: int = 0  # relevant chunks left out to fit the context
    dropped_turns: int = 0  # earlier chat turns left out to fit the context
    below_threshold: int = 0  # retrieved chunks under chat.min_score
    prompt_tokens: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    audit_seq: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "answer": self.answer, "model": self.model, "backend": self.backend,
            "citations": [c.to_dict() for c in self.citations], "latency_ms": round(self.latency_ms, 1),
            "refused": self.refused, "rag": self.rag, "raw": self.raw,
            "retrieved": [c.to_dict() for c in self.retrieved], "dropped_chunks": self.dropped_chunks,
            "dropped_turns": self.dropped_turns, "below_threshold": self.below_threshold,
            "prompt_tokens": self.prompt_tokens, "timings": {k: round(v, 2) for k, v in self.timings.items()},
            "audit_seq": self.audit_seq,
        }


# ----------------------------------------------------------------------------------------------
# Pure logic (unit-tested without models)

def dense_score(c: Chunk) -> float | None:
    if "dense_score" in c.meta:
        return float(c.meta["dense_score"])
    return float(c.score) if c.meta.get("mode") == "dense" else None


def split_relevant(chunks: Sequence[Chunk], min_score: float) -> tuple[list[Chunk], list[Chunk]]:
    """(kept, below): chunks whose dense cosine is below ``min_score`` are irrelevant.

    Chunks without a cosine (an index without stored vectors) are kept: keyword hits are
    evidence too.
    """
    kept: list[Chunk] = []
    below: list[Chunk] = []
    for c in chunks:
        s = dense_score(c)
        (below if s is not None and s < min_score else kept).append(c)
    return kept, below


def fit_to_budget(question: str, chunks: Sequence[Chunk], history: Sequence[Message],
                  count: Callable[[list[Message]], int], budget: int) -> tuple[list[Message], list[Chunk], int, int]:
    """Messages that fit ``budget`` tokens: drop the oldest turns first, then the lowest-ranked chunks.

    Returns (messages, kept_chunks, dropped_chunks, dropped_turns). Never cuts inside a chunk.
    """
    hist, kept = list(history), list(chunks)
    dropped_turns = 0
    msgs = build_messages(question, kept, hist)
    while count(msgs) > budget:
        if hist:
            cut = 2 if len(hist) >= 2 else 1
            hist = hist[cut:]
            dropped_turns += cut
        elif len(kept) > 1:
            kept.pop()
        elif kept:
            raise ConfigError(
                f"Even the best-ranked chunk does not fit the model context ({budget} tokens for the prompt). "
                "Raise chat.num_ctx, lower chat.max_tokens, or ingest with a smaller corpus.chunk_tokens."
            )
        else:
            raise ConfigError(f"The question alone exceeds the model context ({budget} tokens); shorten it or raise chat.num_ctx.")
        msgs = build_messages(question, kept, hist)
    return msgs, kept, len(chunks) - len(kept), dropped_turns


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def _quote_span(chunk: Chunk, quote: str) -> tuple[int, int] | None:
    """Line span of ``quote`` inside the chunk's source lines, when the chunk text maps 1:1 to lines."""
    toks = [re.escape(t) for t in quote.split() if t]
    if not toks:
        return None
    m = re.search(r"\s+".join(toks), chunk.text, flags=re.IGNORECASE)
    if m is None:
        return None
    if chunk.text.count("\n") != chunk.end_line - chunk.start_line:
        return chunk.start_line, chunk.end_line
    start = chunk.start_line + chunk.text[: m.start()].count("\n")
    end = chunk.start_line + chunk.text[: m.end()].count("\n")
    return start, end


def _contains(chunk: Chunk, quote: str) -> bool:
    q = " ".join(_words(quote))
    return bool(q) and f" {q} " in f" {' '.join(_words(chunk.text))} "  # whole words only


def map_citations(raw: str, chunks: Sequence[Chunk]) -> list[Chunk]:
    """Chunks the reply cites: [n] numbers first (n = document number in the prompt), then any
    chunk containing a quoted passage. Each is a copy with meta citation/quote/quote_lines.

    When the reply has neither, the best-ranked chunk containing the short final answer (after
    the <ANSWER>: mark, at least 3 characters) is the citation ("cited_by": "answer"): small
    tuned models often answer correctly without the [n] convention, and the user still needs
    to see where the answer stands. Nothing is cited when no chunk contains it."""
    out: dict[str, Chunk] = {}
    quotes = extract_quotes(raw)
    for n in cited_numbers(raw):
        if 1 <= n <= len(chunks):
            c = chunks[n - 1]
            if c.chunk_id not in out:
                out[c.chunk_id] = replace(c, meta={**c.meta, "citation": n, "cited_by": "number"})
    for q in quotes:
        for i, c in enumerate(chunks, start=1):
            if not _contains(c, q):
                continue
            cited = out.get(c.chunk_id) or replace(c, meta={**c.meta, "citation": i, "cited_by": "quote"})
            if "quote" not in cited.meta:
                cited.meta["quote"] = q
                span = _quote_span(c, q)
                if span:
                    cited.meta["quote_lines"] = list(span)
            out[c.chunk_id] = cited
            break
    final = extract_answer(raw) if ANSWER_MARK in raw else ""
    if not out and len(" ".join(_words(final))) >= 3:
        for i, c in enumerate(chunks, start=1):
            if _contains(c, final):
                cited = replace(c, meta={**c.meta, "citation": i, "cited_by": "answer", "quote": final})
                span = _quote_span(c, final)
                if span:
                    cited.meta["quote_lines"] = list(span)
                out[c.chunk_id] = cited
                break
    return list(out.values())


# ----------------------------------------------------------------------------------------------
# The answering engine


class Answerer:
    """Holds the retriever, backends and audit log across many questions (chat, serve, eval)."""

    def __init__(self, ws: Workspace, audit: AuditLog | None = None):
        self.ws = ws
        self.audit = audit or AuditLog.for_workspace(ws)
        self._retriever: Any = None
        self._reranker: Any = None
        self._backends: dict[tuple[str, str], tuple[ModelRef, ChatBackend]] = {}
        self._lock = threading.Lock()

    @property
    def retriever(self) -> Any:
        if self._retriever is None:
            from rag.retrieve import open_retriever

            self._retriever = open_retriever(self.ws)
        return self._retriever

    @property
    def reranker(self) -> Any:
        """The chat.rerank stage (loaded on first use), or None when it is off."""
        if self._reranker is None and self.ws.config.chat.rerank != "off":
            from rag.rerank import make_reranker

            self._reranker = make_reranker(self.ws)
        return self._reranker

    def backend(self, model: str | None = None, backend: str | None = None) -> tuple[ModelRef, ChatBackend]:
        key = (backend or self.ws.config.chat.backend, model or self.ws.config.chat.model)
        with self._lock:
            if key not in self._backends:
                from rag.llm.factory import make_backend

                ref = resolve_model(self.ws, key[1], key[0])
                self._backends[key] = (ref, make_backend(self.ws, ref))
            return self._backends[key]

    def retrieve(self, question: str, k: int | None = None) -> list[Chunk]:
        cfg = self.ws.config.chat
        with self._lock:
            # dense cosines on every mode's results: chat.min_score gates BM25 hits too
            return list(self.retriever.search(question, k=k or cfg.top_k, mode=cfg.mode, dense_scores=True))

    def relevant(self, question: str, k: int | None = None,
                 timings: dict[str, float] | None = None) -> tuple[list[Chunk], list[Chunk]]:
        """(chunks an answer reads, candidates below chat.min_score): the first stage, the relevance
        gate, then chat.rerank over chat.rerank_depth candidates when it is on (its time goes to
        ``timings['rerank_ms']``)."""
        cfg = self.ws.config.chat
        k = k or cfg.top_k
        reranker = self.reranker
        if reranker is None:
            return split_relevant(self.retrieve(question, k), cfg.min_score)
        from rag.rerank import rerank

        kept, below = split_relevant(self.retrieve(question, max(k, cfg.rerank_depth)), cfg.min_score)
        t = time.perf_counter()
        chunks = rerank(reranker, question, kept, k)
        if timings is not None:
            timings["rerank_ms"] = (time.perf_counter() - t) * 1000
        return chunks, below

    def answer(self, question: str, *, model: str | None = "tuned", backend: str | None = None, rag: bool = True,
               k: int | None = None, history: Sequence[Message] = (), on_token: Callable[[str], None] | None = None,
               event: str = "query", max_tokens: int | None = None, extra: dict[str, Any] | None = None) -> AnswerResult:
        if not question or not question.strip():
            raise ConfigError("The question is empty; type a question.")
        cfg = self.ws.config.chat
        self.audit.check_writable()
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        ref, be = self.backend(model, backend)
        max_tokens = max_tokens or cfg.max_tokens
        chunks: list[Chunk] = []
        below: list[Chunk] = []
        if rag:
            t = time.perf_counter()
            chunks, below = self.relevant(question, k, timings)
            timings["retrieve_ms"] = (time.perf_counter() - t) * 1000
            if not chunks:
                res = AnswerResult(NO_CONTEXT, ref.label, be.name, [], 0.0, NO_CONTEXT, refused=True,
                                   below_threshold=len(below), timings=timings)
                res.latency_ms = (time.perf_counter() - t0) * 1000
                if on_token:
                    on_token(NO_CONTEXT)
                self._record(event, question, ref, be, res, below, "no_context", extra)
                return res
        t = time.perf_counter()
        budget = be.context_length - max_tokens - SAFETY_MARGIN
        msgs, kept, dropped, dropped_turns = fit_to_budget(question, chunks, history, be.prompt_tokens, budget)
        prompt_tokens = be.prompt_tokens(msgs)
        timings["prompt_ms"] = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        try:
            raw = self._generate(be, msgs, max_tokens, on_token, timings, t)
        except RaftsmithError as err:
            fail = AnswerResult("", ref.label, be.name, [], (time.perf_counter() - t0) * 1000, "", rag=rag, retrieved=kept)
            self._record(event, question, ref, be, fail, below, "error", {**(extra or {}), "error": str(err)})
            raise
        timings["generate_ms"] = (time.perf_counter() - t) * 1000
        res = AnswerResult(extract_answer(raw), ref.label, be.name, map_citations(raw, kept), 0.0, raw, rag=rag,
                           retrieved=kept, dropped_chunks=dropped, dropped_turns=dropped_turns,
                           below_threshold=len(below), prompt_tokens=prompt_tokens, timings=timings)
        res.latency_ms = (time.perf_counter() - t0) * 1000
        t = time.perf_counter()
        self._record(event, question, ref, be, res, below, "answered", extra)
        timings["audit_ms"] = (time.perf_counter() - t) * 1000
        return res

    def _generate(self, be: ChatBackend, msgs: list[Message], max_tokens: int,
                  on_token: Callable[[str], None] | None, timings: dict[str, float], t_start: float) -> str:
        temp = self.ws.config.chat.temperature
        if on_token is None:
            out = be.chat(msgs, max_tokens=max_tokens, temperature=temp, stream=False)
            if not isinstance(out, str):
                raise BackendError(f"backend {be.name} returned a stream for a non-streaming call")
            return out
        pieces: list[str] = []
        stream = be.chat(msgs, max_tokens=max_tokens, temperature=temp, stream=True)
        assert isinstance(stream, Iterator)
        for piece in stream:
            if not pieces:
                timings["first_token_ms"] = (time.perf_counter() - t_start) * 1000
            pieces.append(piece)
            on_token(piece)
        return "".join(pieces)

    def _record(self, event: str, question: str, ref: ModelRef, be: ChatBackend, res: AnswerResult,
                below: list[Chunk], outcome: str, extra: dict[str, Any] | None) -> None:
        rec = self.audit.append(
            event, outcome=outcome, model=ref.audit_model(), backend=be.name, query=question,
            rag=res.rag, chunk_ids=[c.chunk_id for c in res.retrieved],
            sources=[c.location for c in res.retrieved], scores=[round(float(c.score), 6) for c in res.retrieved],
            cited=[c.chunk_id for c in res.citations], dropped_chunks=res.dropped_chunks or None,
            below_threshold=len(below) or None, answer=res.raw if res.raw else None,
            latency_ms=round(res.latency_ms, 1),
            **({"rerank": self._reranker.model_label} if self._reranker is not None and res.rag else {}), **(extra or {}),
        )
        res.audit_seq = int(rec["seq"])

    def switch_model(self, old: str | None, new: str, backend: str | None = None) -> ModelRef:
        """Resolve (and load) ``new`` and write a model_switch record."""
        self.audit.check_writable()
        ref, _ = self.backend(new, backend)
        self.audit.append("model_switch", model=ref.audit_model(), previous=old, requested=new, backend=ref.backend)
        return ref

    def warm(self, model: str | None = None, rag: bool = True) -> dict[str, float]:
        """Load what the first answer would load (embedder, index, reranker, the model) and run
        the embedder once; returns seconds per part. For long-running front ends (``raftsmith
        ui``), so that loading happens before the first question rather than during it."""
        took: dict[str, float] = {}
        t = time.perf_counter()
        if rag:
            self.retrieve("warm up")
            took["retrieval_s"] = time.perf_counter() - t
            if self.reranker is not None:
                took["rerank_s"] = time.perf_counter() - t - took["retrieval_s"]
        t = time.perf_counter()
        self.backend(model)
        took["model_s"] = time.perf_counter() - t
        return took

    def close(self) -> None:
        if self._retriever is not None:
            self._retriever.close()
            self._retriever = None


def answer(ws: Workspace, question: str, model: str | None = "tuned", backend: str | None = None, rag: bool = True,
           k: int | None = None, history: Sequence[Message] = (), on_token: Callable[[str], None] | None = None) -> AnswerResult:
    """One question, start to finish (``raftsmith ask``)."""
    engine = Answerer(ws)
    try:
        return engine.answer(question, model=model, backend=backend, rag=rag, k=k, history=history, on_token=on_token)
    finally:
        engine.close()
