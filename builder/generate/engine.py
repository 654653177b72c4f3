"""The generation run: plan, ask the teacher concurrently, verify, append rows, resume.

``run_generate`` is what ``raftsmith generate`` and the demo call. Rows are appended one at a
time with fsync under stable ids, so a killed run loses at most the rows in flight and a
rerun skips what is done; the teacher's replies sit in a SQLite cache, so a rerun of a
finished run makes zero calls.

Longer than ~400 lines because the runner's budget, stop and resume state is shared by
synthesis, answering and the summary; the pure parts already live in plan, raft, answers and
phrasings (the teacher's extra phrasings run there too, through the runner).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.generate.answers import answer_messages, answer_schema, compose_teacher_row
from builder.generate.jsonl import JsonlAppender, read_rows, remove_rows, repair_jsonl
from builder.generate.plan import (
    check_no_heldout_collision,
    holdout_questions,
    plan_items,
    split_manifest,
)
from builder.generate.quality import decontamination_report, verify_quotes
from builder.generate.questions import (
    SYNTH_PROMPT_VERSION,
    Question,
    load_questions,
    questions_from_synthesis,
    synthesis_messages,
    synthesis_schema,
)
from builder.generate.raft import RaftItem, build_row, closed_book_reply, reference_completion
from rag.config import Workspace
from rag.errors import ConfigError, IndexStoreError, TeacherError
from rag.fsutil import atomic_write
from rag.progress import Progress, emit
from rag.prompting import PROMPT_VERSION, REFUSAL_ANSWER, REFUSAL_REPLY

log = logging.getLogger(__name__)

ANSWER_PROMPT_VERSION = f"{PROMPT_VERSION}+answer-v1"
QUALITY_RETRIES = 2  # regenerations of a row whose quotes do not verify


@dataclass
class GenerateSummary:
    corpus: str
    provider: str
    model: str
    train_rows: int = 0
    eval_rows: int = 0
    new_rows: int = 0
    refusal_rows: int = 0
    closed_book_rows: int = 0  # rows with no documents, answered with the fact
    teacher_phrasings: int = 0  # more phrasings of the items, written by the teacher (raft.paraphrases)
    teacher_reversals: int = 0  # reversed questions (attribute -> entity), each a fact of its own
    resumed_rows: int = 0
    planned: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    calls: int = 0
    cache_hits: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    dry_run: bool = False
    estimated_rows: int = 0  # dry run: planned rows + synthesized questions (before dedup)
    estimated_prompt_tokens: int = 0
    estimated_completion_tokens: int = 0
    estimated_cost_usd: float = 0.0
    stopped: str | None = None
    redactions: dict[str, int] = field(default_factory=dict)
    payloads_sent: int = 0
    quotes_verified_rows: int = 0
    torn_bytes_repaired: int = 0
    decontamination: dict[str, Any] = field(default_factory=dict)
    near_duplicates: list[dict[str, Any]] = field(default_factory=list)
    split: dict[str, Any] = field(default_factory=dict)  # what eval holds out (also <corpus>.split.json)
    synth_coverage: dict[str, Any] = field(default_factory=dict)  # --synthesize: facts per chunk, chunks with none
    files: dict[str, str] = field(default_factory=dict)
    elapsed_s: float = 0.0
    answer_s: float = 0.0  # wall time of the answering phase alone (throughput = new_rows / answer_s)

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


#: facts per chunk a dry run's estimate assumes (a chunk of ~256 tokens states a handful)
SYNTH_FACTS_ESTIMATE = 4


def synth_coverage(chunks: list[Any], got: list[tuple[str, list[Question]]], failed: list[str]) -> dict[str, Any]:
    """Facts per chunk from synthesis: how many chunks gave facts, the spread, and which gave
    none (their facts reach training only through question files)."""
    facts = {cid: sum(1 for q in qs if not q.extra.get("fact")) for cid, qs in got}
    counts = [facts.get(c.chunk_id, 0) for c in chunks]
    none = [c for c in chunks if not facts.get(c.chunk_id)]
    return {
        "chunks": len(chunks), "chunks_with_facts": sum(1 for n in counts if n), "facts": sum(counts),
        "phrasings": sum(len(qs) for _, qs in got),
        "facts_per_chunk": {"mean": round(sum(counts) / len(counts), 2) if counts else 0.0,
                            "min": min(counts, default=0), "max": max(counts, default=0)},
        "chunks_without_facts": len(none), "teacher_failed": len(failed),
        "chunks_without_facts_sample": [{"chunk_id": c.chunk_id, "source": c.source, "heading": c.heading}
                                        for c in none[:20]],
    }


def output_paths(ws: Workspace) -> dict[str, Path]:
    name = ws.config.corpus.name
    return {s: ws.training_dir / f"{name}.{s}.jsonl" for s in ("train", "eval")}


def _chunk_sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _meta(item: RaftItem, answer: str, quotes_ok: bool, provider: str, model: str, prompt_version: str) -> dict[str, Any]:
    ctx = item.context
    chunks = {c.chunk_id: c for c in [*ctx.oracle, *ctx.documents]}
    return {
        "id": item.id,
        "question": item.question,
        "answer": answer,
        "oracle_chunk_ids": [c.chunk_id for c in ctx.oracle],
        "distractor_chunk_ids": [c.chunk_id for c in ctx.distractors],
        "has_oracle": ctx.has_oracle,
        "quotes_verified": quotes_ok,
        "teacher": {"provider": provider, "model": model, "prompt_version": prompt_version},
        "source_sha256": {cid: _chunk_sha(c.text) for cid, c in chunks.items()},
        "split": item.split,
        "category": item.category,
        "reference_answer": item.answer,
    }


# ---------------------------------------------------------------- run


def _estimate_tokens(messages: Sequence[dict[str, str]]) -> int:
    return sum(len(m["content"]) for m in messages) // 4 + 8 * len(messages)


def run_generate(
    ws: Workspace,
    questions: Sequence[str | os.PathLike[str]] | None = None,
    synthesize: int | None = None,
    teacher: Any = None,
    dry_run: bool = False,
    local_only: bool | None = None,
    limit: int | None = None,
    progress: Progress | None = None,
    *,
    model: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    concurrency: int | None = None,
    retriever: Any = None,
    quality_retries: int = QUALITY_RETRIES,
) -> GenerateSummary:
    """Generate RAFT rows into training_data/<corpus>.{train,eval}.jsonl; see module doc.

    ``teacher`` is a provider name ("none", "openrouter", ...), a ready Teacher object, or None
    for ``teacher.provider`` from the config.
    """
    t0 = time.monotonic()
    cfg = ws.config
    provider = teacher if isinstance(teacher, str) else (cfg.teacher.provider if teacher is None else teacher.provider)
    n_synth = cfg.raft.synthesize_per_chunk if synthesize is None else synthesize
    if provider == "none" and n_synth:
        raise ConfigError("--synthesize needs a teacher: pass --teacher openrouter|openai|openai-compatible|ollama, or --synthesize 0.")
    qpaths = [ws.path(p) for p in (questions if questions else cfg.raft.questions)]
    qs: list[Question] = load_questions(qpaths) if qpaths else []

    # the teacher first: a missing key or a refused URL is reported before any model loads
    teacher_obj: Any = None
    if provider != "none":
        if isinstance(teacher, str) or teacher is None:
            from builder.generate.teacher import make_teacher

            teacher_obj = make_teacher(
                ws, provider, model=model, base_url=base_url,
                api_key=api_key or ("dry-run-needs-no-key" if dry_run else None),
                local_only=cfg.teacher.local_only if local_only is None else local_only,
            )
        else:
            teacher_obj = teacher
    own_retriever = retriever is None
    try:
        if retriever is None:
            from rag.retrieve import Retriever

            if not ws.index_dir.exists():
                raise IndexStoreError(f"No index at {ws.index_dir}. Run 'raftsmith ingest' first.")
            retriever = Retriever.from_workspace(ws)
    except BaseException:
        if teacher_obj is not None:
            asyncio.run(teacher_obj.aclose())
        raise
    try:
        tmodel = teacher_obj.model if teacher_obj is not None else "reference"
        summary = GenerateSummary(corpus=cfg.corpus.name, provider=provider, model=tmodel, dry_run=dry_run)
        runner = _Runner(ws, summary, teacher_obj, concurrency or cfg.teacher.concurrency, progress)
        runner.quality_retries = quality_retries
        return asyncio.run(runner.run(qs, n_synth, retriever, limit, dry_run, t0))
    finally:
        if own_retriever:
            retriever.close()


class _Runner:
    def __init__(self, ws: Workspace, summary: GenerateSummary, teacher: Any, concurrency: int,
                 progress: Progress | None):
        self.ws = ws
        self.cfg = ws.config
        self.s = summary
        self.teacher = teacher
        self.sem = asyncio.Semaphore(max(1, concurrency))
        self.progress = progress
        self._progress_done = self._progress_total = 0
        self._progress_label = ""
        self.stop = False
        self.quality_retries = QUALITY_RETRIES
        self._synth_estimate = 0

    # -- budget
    def _spent(self) -> float:
        if self.teacher is None:
            return 0.0
        st = self.teacher.stats
        return st.cost_usd

    def _over_budget(self) -> bool:
        cap = self.cfg.teacher.max_cost_usd
        if cap > 0 and self._spent() >= cap:
            if not self.stop:
                self.stop = True
                self.s.stopped = f"max_cost_usd reached (${self._spent():.4f} >= ${cap:.2f}); rerun with a higher teacher.max_cost_usd to continue"
            return True
        return False

    async def run(self, qs: list[Question], n_synth: int, retriever: Any, limit: int | None, dry_run: bool, t0: float) -> GenerateSummary:
        raft = self.cfg.raft
        try:
            if n_synth:
                qs = qs + await self._synthesize(retriever.all_chunks(), n_synth, dry_run)
            held_qs = holdout_questions(self.ws, qs)
            if self.teacher is not None and raft.paraphrases and not dry_run:
                from builder.generate.phrasings import rephrase

                qs = qs + await rephrase(self, qs, held_qs, retriever)
            plan = plan_items(qs, retriever, raft, need_reference=self.teacher is None, limit=limit)
            check_no_heldout_collision(plan.items, [*qs, *held_qs])
            for k, v in plan.dropped.items():
                self.s.drop(k, v)
            self.s.near_duplicates = plan.duplicates
            self.s.planned = len(plan.items)
            paths = output_paths(self.ws)
            self.s.files = {k: str(v) for k, v in paths.items()}
            self.s.split = split_manifest(plan.items, raft)
            if dry_run:
                self._estimate(plan.items)
                return self._finish(t0)
            done: set[str] = set()
            # Rows made before their question was held out (a file later marked
            # 'holdout: true', a new paraphrase_of) leave the training data on resume.
            held = {q.id for q in qs if q.held_out}
            for p in paths.values():
                self.s.torn_bytes_repaired += repair_jsonl(p)
                gone = remove_rows(p, held)
                if gone:
                    self.s.drop("held_out_removed", gone)
                done.update(r["meta"]["id"] for r in read_rows(p) if isinstance(r, dict) and "meta" in r)
            pending = [it for it in plan.items if it.id not in done]
            self.s.resumed_rows = len(plan.items) - len(pending)
            writers = {k: JsonlAppender(p) for k, p in paths.items()}
            try:
                ta = time.monotonic()
                await self._answer_all(pending, writers)
                self.s.answer_s = round(time.monotonic() - ta, 3)
            finally:
                for w in writers.values():
                    w.close()
            self._report(paths, retriever)
            return self._finish(t0)
        finally:
            if self.teacher is not None:
                await self.teacher.aclose()

    def _finish(self, t0: float) -> GenerateSummary:
        if self.teacher is not None:
            st = self.teacher.stats
            self.s.calls, self.s.cache_hits, self.s.retries = st.calls, st.cache_hits, st.retries
            self.s.prompt_tokens, self.s.completion_tokens = st.prompt_tokens, st.completion_tokens
            self.s.cost_usd = round(st.cost_usd, 6)
            self.s.redactions = dict(st.redactions)
            self.s.payloads_sent = st.payloads_sent
        self.s.elapsed_s = round(time.monotonic() - t0, 3)
        if not self.s.dry_run:
            self.ws.state_dir.mkdir(parents=True, exist_ok=True)
            out = self.ws.state_dir / "generate_summary.json"
            atomic_write(out, json.dumps(self.s.to_dict(), indent=2, default=str))
            if self.s.split:  # the training data's manifest: what eval holds out, beside the rows
                self.ws.training_dir.mkdir(parents=True, exist_ok=True)
                atomic_write(self.ws.training_dir / f"{self.cfg.corpus.name}.split.json", json.dumps(self.s.split, indent=2))
        return self.s

    def _estimate(self, items: list[RaftItem]) -> None:
        raft, tc = self.cfg.raft, self.cfg.teacher
        if self.teacher is None:
            return
        # refusal and closed-book rows make no call
        items = [it for it in items if not it.extra.get("refusal") and not it.extra.get("closed_book_of")]
        p_tok = sum(_estimate_tokens(answer_messages(it, raft.cot, raft.quote_begin, raft.quote_end)) for it in items)
        n_rows = len(items) + self._synth_estimate
        if items and self._synth_estimate:
            p_tok += round(p_tok / len(items) * self._synth_estimate)
        self.s.estimated_rows = n_rows
        c_tok = n_rows * (min(tc.max_tokens, 250) if raft.cot else 40)
        self.s.estimated_prompt_tokens += p_tok
        self.s.estimated_completion_tokens += c_tok
        self.s.estimated_cost_usd = round(
            self.s.estimated_prompt_tokens * tc.price_in_per_mtok / 1e6 + self.s.estimated_completion_tokens * tc.price_out_per_mtok / 1e6, 6
        )

    def _report(self, paths: dict[str, Path], retriever: Any) -> None:
        rows = [r for p in paths.values() for r in read_rows(p)]
        self.s.train_rows = sum(r["meta"]["split"] == "train" for r in rows)
        self.s.eval_rows = sum(r["meta"]["split"] == "eval" for r in rows)
        self.s.quotes_verified_rows = sum(bool(r["meta"].get("quotes_verified")) for r in rows)
        rep = decontamination_report(rows, retriever.embed, self.cfg.raft.dedup_threshold)
        self.s.decontamination = rep.to_dict()

    # -- progress
    def _progress_start(self, total: int, label: str) -> None:
        self._progress_done, self._progress_total, self._progress_label = 0, total, label
        if total:
            emit(self.progress, 0, total, label)

    def _progress_advance(self) -> None:
        if self.progress is None or not self._progress_total:
            return
        self._progress_done += 1
        label = self._progress_label
        if self.teacher is not None:
            st = self.teacher.stats
            label += (f"  tok {st.prompt_tokens + st.completion_tokens:,}  ${st.cost_usd:.4f}"
                      f"  calls {st.calls} cached {st.cache_hits}")
        emit(self.progress, self._progress_done, self._progress_total, label)

    def _progress_stop(self) -> None:
        self._progress_total = 0

    async def ask_once(self, what: str, messages: list[dict[str, str]], schema: dict[str, Any], prompt_version: str,
                       max_tokens: int, tag: str) -> Any:
        """One structured teacher request under the concurrency limit and the budget; None when
        it was not started (budget reached) or failed for good (counted as '<what>_...')."""
        async with self.sem:
            if self.stop or self._over_budget():
                self.s.drop(f"{what}_not_started_budget")
                return None
            try:
                return await self.teacher.complete_json(messages, schema, prompt_version=prompt_version,
                                                        max_tokens=min(max_tokens, self.cfg.teacher.max_tokens), tag=tag)
            except TeacherError as err:
                if getattr(err, "fatal", True):
                    raise
                self.s.drop(f"{what}_teacher_failed")
                return None
            finally:
                self._progress_advance()

    # -- synthesis
    async def _synthesize(self, chunks: list[Any], n: int, dry_run: bool) -> list[Question]:
        """Every chunk's atomic facts, each with ``n`` phrasings (one teacher call per chunk);
        the coverage (facts per chunk, chunks with none) goes into the summary."""
        max_facts = self.cfg.raft.synthesize_max_facts
        if dry_run:
            for c in chunks:
                self.s.estimated_prompt_tokens += _estimate_tokens(synthesis_messages(c, n, max_facts))
                self.s.estimated_completion_tokens += (40 * n + 40) * SYNTH_FACTS_ESTIMATE
            self._synth_estimate = len(chunks) * n * SYNTH_FACTS_ESTIMATE  # answered like the planned rows
            return []
        out: list[tuple[str, list[Question]]] = []
        failed: list[str] = []
        self._progress_start(len(chunks), "synthesize")

        async def one(c: Any) -> None:
            reply = await self.ask_once("synth", synthesis_messages(c, n, max_facts), synthesis_schema(n, max_facts),
                                        SYNTH_PROMPT_VERSION, (60 * n + 60) * max_facts, f"synth:{c.chunk_id}")
            if reply is None:
                failed.append(c.chunk_id)
                return
            got, rejected = questions_from_synthesis(c, reply.data, n, max_facts)
            for k, v in rejected.items():
                self.s.drop(k, v)
            out.append((c.chunk_id, got))

        try:
            await self._all(one(c) for c in chunks)
        finally:
            self._progress_stop()
        self.s.synth_coverage = synth_coverage(chunks, out, failed)
        # deterministic order whatever the completion order was
        return [q for _, got in sorted(out, key=lambda t: t[0]) for q in got]

    # -- answers
    async def _answer_all(self, items: list[RaftItem], writers: dict[str, JsonlAppender]) -> None:
        self._progress_start(len(items), "generate")
        try:
            refusals = [it for it in items if it.extra.get("refusal")]
            for it in refusals:  # the reply is fixed: no teacher call
                self._write_refusal(it, writers)
                self._progress_advance()
            closed = [it for it in items if it.extra.get("closed_book_of")]
            items = [it for it in items if not it.extra.get("refusal") and not it.extra.get("closed_book_of")]
            if self.teacher is None:
                for it in items:
                    self._write_reference(it, writers)
                    self._progress_advance()
            else:
                await self._all(self._answer_one(it, writers) for it in items)
            self._write_closed_book(closed, writers)
        finally:
            self._progress_stop()

    def _write_closed_book(self, items: list[RaftItem], writers: dict[str, JsonlAppender]) -> None:
        """Closed-book rows: the reference answer, or the answer the teacher gave the same
        question with its documents (no second call). A question whose RAFT row failed
        gets none."""
        answers: dict[str, str] = {}
        if any(it.answer is None for it in items):
            answers = {str(r["meta"]["id"]): str(r["meta"]["answer"]) for r in read_rows(writers["train"].path)
                       if isinstance(r, dict) and r.get("meta", {}).get("answer")}
        for it in items:
            answer = it.answer or answers.get(str(it.extra["closed_book_of"]))
            if not answer:
                self.s.drop("closed_book_without_answer")
            else:
                meta = _meta(it, answer, False, "none", "reference" if it.answer else "teacher-answer", PROMPT_VERSION)
                meta["closed_book"] = True
                meta["closed_book_of"] = it.extra["closed_book_of"]
                writers[it.split].append(build_row(it, closed_book_reply(answer), meta))
                self.s.new_rows += 1
                self.s.closed_book_rows += 1
            self._progress_advance()

    async def _all(self, coros: Iterable[Coroutine[Any, Any, None]]) -> None:
        """Run the requests to their end; the first error stops new ones and is raised last.

        A bare gather raises at the first error while the other requests still run: their
        replies then reached the teacher cache and the row files after the caller had
        closed them (a SIGSEGV in sqlite3, once). Here nothing is in flight on return.
        """

        async def guarded(c: Coroutine[Any, Any, None]) -> None:
            try:
                await c
            except BaseException:
                self.stop = True  # requests not started yet return at once
                raise

        results = await asyncio.gather(*(guarded(c) for c in coros), return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r

    def _write_reference(self, it: RaftItem, writers: dict[str, JsonlAppender]) -> None:
        raft = self.cfg.raft
        assert it.answer is not None
        content, quotes = reference_completion(
            it.question, it.answer, it.context, cot=raft.cot, quote_begin=raft.quote_begin, quote_end=raft.quote_end
        )
        verified = bool(quotes) and verify_quotes(content, it.context.oracle, raft.quote_begin, raft.quote_end).ok
        meta = _meta(it, it.answer, verified, "none", "reference", PROMPT_VERSION)
        writers[it.split].append(build_row(it, content, meta))
        self.s.new_rows += 1

    def _write_refusal(self, it: RaftItem, writers: dict[str, JsonlAppender]) -> None:
        meta = _meta(it, REFUSAL_ANSWER, False, "none", "refusal", PROMPT_VERSION)
        meta["refusal"] = True
        if it.answer is not None:  # an answerable question whose oracle was left out (raft.no_oracle: refuse)
            meta["refusal_reason"] = "oracle_absent"
        writers[it.split].append(build_row(it, REFUSAL_REPLY, meta))
        self.s.new_rows += 1
        self.s.refusal_rows += 1

    async def _answer_one(self, it: RaftItem, writers: dict[str, JsonlAppender]) -> None:
        raft = self.cfg.raft
        async with self.sem:
            if self.stop or self._over_budget():
                self.s.drop("not_started_budget")
                return
            try:
                reason: str | None = None
                for attempt in range(self.quality_retries + 1):
                    try:
                        reply = await self.teacher.complete_json(
                            answer_messages(it, raft.cot, raft.quote_begin, raft.quote_end),
                            answer_schema(raft.cot), prompt_version=ANSWER_PROMPT_VERSION,
                            max_tokens=self.cfg.teacher.max_tokens, attempt=attempt, tag=it.id,
                        )
                    except TeacherError as err:
                        if getattr(err, "fatal", True):
                            raise
                        reason = getattr(err, "reason", "teacher_failed")
                        break
                    content, answer, ok, reason = compose_teacher_row(it, reply.data, raft.cot, raft.quote_begin, raft.quote_end)
                    if reason is None:
                        meta = _meta(it, answer, ok, self.teacher.provider, self.teacher.model, ANSWER_PROMPT_VERSION)
                        # fsync in a worker thread: other requests keep flowing meanwhile
                        await asyncio.to_thread(writers[it.split].append, build_row(it, content, meta))
                        self.s.new_rows += 1
                        return
                    if reason == "empty_answer" or self._over_budget():
                        break
                self.s.drop(reason or "teacher_failed")
            finally:
                self._progress_advance()
