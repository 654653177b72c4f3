"""``raftsmith eval``: models x {RAG, closed book} on held-out questions, with a report.

The run asks every question of every model in each mode through :class:`rag.answer.Answerer`
(the answering path users get), scores the rows (:mod:`rag.evaluate.metrics`) and writes the
report (:mod:`rag.evaluate.report`). ``retrieval_recall`` measures retrieval alone.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import statistics
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rag.answer import Answerer
from rag.config import Workspace
from rag.errors import AuditError, ConfigError, RaftsmithError
from rag.evaluate.metrics import contains_words, normalize, score_row, summarize
from rag.evaluate.probe import load_probe, probe_model, probe_summary
from rag.evaluate.questions import EvalItem, load_items
from rag.evaluate.report import EvalReport, write_outputs
from rag.progress import Progress, emit
from rag.types import Chunk

log = logging.getLogger(__name__)


def attach_oracles(engine: Answerer, items: list[EvalItem]) -> None:
    """For items without oracle ids: the best-ranked chunk that contains the reference answer."""
    for it in items:
        if it.oracle_chunk_ids or not it.answer:
            continue
        ref = normalize(it.answer)
        for c in engine.retrieve(f"{it.question} {it.answer}", k=10):
            if ref and ref in normalize(c.text):
                it.oracle_chunk_ids = [c.chunk_id]
                break


# --- the run ---------------------------------------------------------------------------------

def retrieval_recall(ws: Workspace, items: Sequence[EvalItem], k: int | None = None,
                     modes: Sequence[str] = ("dense", "bm25", "hybrid"),
                     rerankers: Sequence[str] | None = None,
                     compare: Sequence[str] | None = None) -> dict[str, Any]:
    """Recall@k of each retrieval mode over the answerable items, with no answering model involved.

    A question counts as found when one of its top-k chunks is an oracle chunk (eval split
    rows) or contains the normalized reference answer (question YAML items). This is the
    ceiling RAG answers can reach with ``chat.top_k = k`` (after the ``chat.min_score``
    relevance gate, as in answering): measure it on your own question set to choose ``chat.mode``.
    ``mrr`` is the mean reciprocal rank of the first answer-bearing chunk within those k; it
    breaks ties in recall when ``best`` is chosen. ``p50_ms`` is the median time of one
    question's retrieval, run one question at a time as ``ask`` does.

    ``rerankers`` (default: chat.rerank when it is on) are measured on top of every mode, as
    rows named ``MODE+RERANKER``: chat.rerank_depth candidates, the gate, then the reranker's top k.
    ``best`` is one of those row names; ``best_mode`` / ``best_rerank`` are the chat.mode and
    chat.rerank values that give it.

    ``compare``: other embedding models (folders, hub ids in the local cache, 'default'), each
    measured on the same chunks re-embedded in memory, as rows ``ROW@NAME`` (dense and hybrid;
    BM25 does not change). None = the model a tuned embedder (``raftsmith train-retriever``) was
    trained from, named ``base``, when the index's embedder is one. Those rows never become
    ``best``: they are what the index would give with that embedder.
    """
    from rag.rerank import Reranker, make_reranker
    from rag.retrieve import ReembeddedRetriever, Retriever

    chat = ws.config.chat
    k = k or chat.top_k
    answerable = [it for it in items if not it.unanswerable and it.answer]
    if not answerable:
        raise ConfigError("No answerable questions to measure retrieval with; give a question file with answers.")
    names = [chat.rerank] if rerankers is None else list(rerankers)
    loaded: dict[str, Reranker] = {}
    for name in dict.fromkeys(names):
        reranker = make_reranker(ws, name)
        if reranker is not None:
            loaded[name] = reranker
    depth = max(k, chat.rerank_depth)
    others = _embedders_to_compare(ws, compare)
    rows: dict[str, tuple[float, float, float]] = {}
    retriever = Retriever.from_workspace(ws)
    try:
        rows.update(_measure_retriever(retriever, answerable, modes, loaded, k, depth, chat.min_score))
    finally:
        retriever.close()
    embedders: dict[str, Any] = {"index": ws.config.embedding.model or "default"}
    for label, model in others.items():
        t0 = time.perf_counter()
        cfg = ws.config.embedding.model_copy(update={"model": model})
        try:
            other = ReembeddedRetriever(ws.index_dir, cfg, ws.root, chat)
        except ConfigError as err:  # e.g. a tuned embedder's base that is not on this machine
            embedders[label] = {"model": model, "error": str(err)}
            continue
        embedders[label] = {"model": model, "reembed_s": round(time.perf_counter() - t0, 2)}
        try:
            measured = _measure_retriever(other, answerable, [m for m in modes if m != "bm25"], loaded, k, depth,
                                          chat.min_score)
        finally:
            other.close()
        rows.update({f"{row}@{label}": v for row, v in measured.items()})
    recall = {row: v[0] for row, v in rows.items()}
    mrr = {row: v[1] for row, v in rows.items()}
    p50 = {row: v[2] for row, v in rows.items()}
    # A tie in recall goes to the mode that ranks the answer-bearing chunk higher (a small model
    # reads the first passage most), then to the one without a reranker (cheaper), then to hybrid.
    live = [m for m in recall if "@" not in m]
    best = max(live, key=lambda m: (recall[m], mrr[m], "+" not in m, m.split("+")[0] == "hybrid"))
    best_mode, _, best_rerank = best.partition("+")
    out: dict[str, Any] = {"k": k, "questions": len(answerable), "recall": recall, "mrr": mrr, "p50_ms": p50,
                           "best": best, "best_mode": best_mode, "best_rerank": best_rerank or "off"}
    if others:
        out["embedders"] = embedders
    if loaded:
        out["rerank_depth"] = depth
        out["rerankers"] = {name: r.model_label for name, r in loaded.items()}
    return out


#: the tuned embedder's base is compared by default only up to this many chunks (re-embedding
#: them all takes about a minute per 1,000 on a 2-core CPU); '--compare-embedder base' asks always
AUTO_COMPARE_MAX_CHUNKS = 5000


def _embedders_to_compare(ws: Workspace, compare: Sequence[str] | None) -> dict[str, str]:
    """label -> embedding.model value of each embedder to measure beside the index's own:
    ``compare`` as given ('base' = the model a tuned embedder was trained from), or by default
    that base when the index's embedder is a tuned one, the base can be found here and the
    index is small enough."""
    from rag.index.embedder import resolve_model_dir, tuned_from

    base = tuned_from(ws.config.embedding, ws.root)
    if compare is not None:
        out: dict[str, str] = {}
        for m in dict.fromkeys(compare):
            if m == "base":
                if base is None:
                    raise ConfigError("--compare-embedder base: the index's embedder was not made by "
                                      "'raftsmith train-retriever', so it has no base; name a model instead.")
                out["base"] = base
            elif m and m != (ws.config.embedding.model or "default") and m != "index":
                out[m] = m
        return out
    if base is None:
        return {}
    try:
        resolve_model_dir(ws.config.embedding.model_copy(update={"model": base}), ws.root)
    except ConfigError:
        log.info("the tuned embedder's base %s is not on this machine: not compared", base)
        return {}
    from rag.index.store import IndexStore

    store = IndexStore(ws.index_dir, readonly=True)
    try:
        n = store.count_chunks()
    finally:
        store.close()
    if n > AUTO_COMPARE_MAX_CHUNKS:
        log.info("%d chunks: the base embedder is compared only with --compare-embedder base", n)
        return {}
    return {"base": base}


def _measure_retriever(retriever: Any, answerable: Sequence[EvalItem], modes: Sequence[str], rerankers: dict[str, Any],
                       k: int, depth: int, min_score: float) -> dict[str, tuple[float, float, float]]:
    """row name -> (recall@k, MRR, p50 ms) of one retriever, every mode with and without each reranker."""
    from rag.answer import split_relevant
    from rag.rerank import rerank

    out: dict[str, tuple[float, float, float]] = {}
    for mode in modes:
        for name, reranker in [("", None), *rerankers.items()]:
            def top(question: str, mode: str = mode, reranker: Any = reranker) -> list[Chunk]:
                hits = retriever.search(question, k=depth if reranker else k, mode=mode, dense_scores=True)
                chunks, _below = split_relevant(hits, min_score)  # what an answer would be given
                return rerank(reranker, question, chunks, k) if reranker else chunks

            top(answerable[0].question)  # warm-up: model loads are not a query's latency
            found, reciprocal, times = 0, 0.0, []
            for it in answerable:
                t0 = time.perf_counter()
                chunks = top(it.question)
                times.append((time.perf_counter() - t0) * 1000)
                ref = normalize(it.answer or "")
                oracles = set(it.oracle_chunk_ids)
                rank = next((r for r, c in enumerate(chunks, start=1)
                             if c.chunk_id in oracles or contains_words(normalize(c.text), ref)), None)
                if rank is not None:
                    found += 1
                    reciprocal += 1.0 / rank
            out[f"{mode}+{name}" if name else mode] = (round(found / len(answerable), 4),
                                                       round(reciprocal / len(answerable), 4),
                                                       round(statistics.median(times), 2))
    return out


def run_eval(ws: Workspace, models: Sequence[str] = ("base", "tuned"), rag_modes: Sequence[bool] = (True, False),
             questions: Sequence[str | Path] | None = None, out_dir: str | Path | None = None, backend: str | None = None,
             limit: int | None = None, progress: Progress | None = None,
             judge: bool = False, forgetting: bool = False, probe_limit: int | None = None,
             parallel: bool | None = None) -> EvalReport:
    """Every question through models x rag_modes; writes results.json, report.md/.html, chart.png.

    ``progress`` gets one event per question: (asked so far, questions x models x modes, label).
    ``forgetting``: also ask the packaged general-knowledge probe closed book (retention needs
    'base' among the models). ``parallel``: ask the models at the same time, each on its share
    of the cores (None: when every model runs in-process in llama.cpp and there are cores to
    share; see :func:`_share_cores`). Answers are the same either way (greedy, fixed seed);
    latencies are then those of a model on its share of the cores, and the summary says so.
    """
    items = load_items(ws, questions, limit)
    out = Path(out_dir) if out_dir else ws.state_dir / "eval" / dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out.mkdir(parents=True, exist_ok=True)
    engine = Answerer(ws)
    try:
        if any(rag_modes):
            attach_oracles(engine, items)
        refs = {m: engine.backend(m, backend) for m in models}  # resolve (and load) before timing anything
        probe_items = (load_probe()[:probe_limit] if probe_limit else load_probe()) if forgetting else []
        total = (len(items) * len(rag_modes) + len(probe_items)) * len(models)
        ticks = _Ticker(progress, total)

        def one_model(model: str) -> tuple[list[dict[str, Any]], dict[str, str]]:
            rows = []
            for rag in rag_modes:
                for i, it in enumerate(items, start=1):
                    ticks(f"{model} {'rag' if rag else 'no-rag'} {i}/{len(items)}: {it.id}")
                    rows.append(_ask(engine, it, model, backend, rag))
            answers = probe_model(engine, model, probe_items, backend,
                                  on_item=lambda i: ticks(f"{model} forgetting probe {i}/{len(probe_items)}"))
            return rows, answers

        threads = _share_cores([be for _, be in refs.values()]) if parallel is not False and len(models) > 1 else None
        if threads is not None:
            results = _run_side_by_side(one_model, list(models), [refs[m][1] for m in models], threads)
        else:
            results = [one_model(m) for m in models]
        all_rows: list[dict[str, Any]] = []
        summary: list[dict[str, Any]] = []
        for model, (rows, _answers) in zip(models, results, strict=True):
            ref = refs[model][0]
            for rag in rag_modes:
                cell = [r for r in rows if r["rag"] == rag]
                for r in cell:
                    r.update(model=model, model_label=ref.label)
                all_rows += cell
                summary.append(summarize(cell, model, rag) | {"model_label": ref.label, "digest": ref.digest,
                                                             "threads_per_model": threads})
        probe = (probe_summary(probe_items, models, {m: a for m, (_, a) in zip(models, results, strict=True)})
                 if forgetting else None)
    finally:
        engine.close()
    if judge:
        from rag.evaluate.judge import judge_rows

        judge_rows(ws, all_rows)
        for s in summary:
            grades = [r["judge"]["score"] for r in all_rows
                      if r["model"] == s["model"] and r["rag"] == s["rag"] and "score" in r.get("judge", {})]
            s["judge_score"] = round(statistics.fmean(grades), 4) if grades else None
    if probe is not None:
        for srow in summary:
            srow["general_right"] = round(probe["right"][srow["model"]] / probe["n"], 4)
            srow["retention"] = probe["retention"].get(srow["model"])
    report = EvalReport(out, summary, all_rows, probe)
    write_outputs(report, ws)
    return report


def _ask(engine: Answerer, it: EvalItem, model: str, backend: str | None, rag: bool) -> dict[str, Any]:
    try:
        res = engine.answer(it.question, model=model, backend=backend, rag=rag, event="eval", extra={"eval_item": it.id})
    except AuditError:
        raise
    except RaftsmithError as err:  # one failing question is a row, not the end of the run
        return {"id": it.id, "question": it.question, "reference": it.answer, "unanswerable": it.unanswerable,
                "answer": "", "raw": "", "refused": False, "latency_ms": 0.0, "cited": [], "oracle": it.oracle_chunk_ids,
                "retrieved": [], "error": str(err), "rag": rag,
                **({} if it.unanswerable else {"correct": False, "exact": False, "contains": False, "f1": 0.0})}
    return score_row(it, res) | {"rag": rag}


class _Ticker:
    """Progress events counted across the threads that ask questions."""

    def __init__(self, progress: Progress | None, total: int):
        self.progress, self.total, self.done = progress, total, 0
        self._lock = threading.Lock()

    def __call__(self, label: str) -> None:
        with self._lock:
            self.done += 1
            emit(self.progress, self.done, self.total, label)


def _share_cores(backends: Sequence[Any]) -> int | None:
    """Threads per model when the models can answer side by side, else None.

    Token-by-token generation on a small model does not use two cores fully (1.36x on two
    threads over one, benchmarks/threads.py), so two models on one core each get more done
    than one model after the other on both. Only in-process llama.cpp models qualify (their
    thread counts can be set per model), and only when every model gets a core of its own.
    """
    from rag.llm.llama_cpp_backend import physical_cores

    if len(backends) < 2 or not all(callable(getattr(be, "threads", None)) for be in backends):
        return None
    if len({id(getattr(be, "_llm", be)) for be in backends}) < len(backends):
        return None  # two names for one loaded model: it answers one question at a time anyway
    per = physical_cores() // len(backends)
    return per if per >= 1 else None


def _run_side_by_side(fn: Any, models: list[str], backends: list[Any], threads: int) -> list[Any]:
    from concurrent.futures import ThreadPoolExecutor

    with contextlib.ExitStack() as stack:
        for be in backends:
            stack.enter_context(be.threads(threads))
        with ThreadPoolExecutor(max_workers=len(models), thread_name_prefix="eval") as pool:
            return list(pool.map(fn, models))
