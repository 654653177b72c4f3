"""``raftsmith eval``: models x {RAG, closed book} on held-out questions, with a report.

Questions come from the eval split (training_data/<corpus>.eval.jsonl, rows carry the oracle
chunk ids) and/or question YAML files (items with ``unanswerable: true`` / ``answer: null``
expect a refusal). Metrics per (model, mode):

* correct (the headline): the answer states the reference's content, however it is worded:
  every content word and number of the reference occurs in the extracted answer (the part
  after ``<ANSWER>:`` when present, else the reply) as a whole token, with case, markdown,
  punctuation at word edges, thousands separators and unit spellings normalized. A right
  answer in a full sentence is right; "6400" is not "640" and "10.74.0.7" not "10.7.40.7";
* exact (strict, a column): the extracted answer equals the reference after SQuAD-style normalization (case,
  punctuation, articles and spacing ignored), so "<ANSWER>: 7431" counts and a paragraph
  that happens to contain 7431 does not;
* contains: the normalized reference appears somewhere in the extracted answer (lenient:
  a model that rambles over the context scores here without answering);
* f1: token F1 between the extracted answer and the reference (SQuAD style);
* citation accuracy: a cited chunk is an oracle chunk (eval split ids, or for YAML items the
  best-ranked chunk that contains the reference answer);
* refusal rate on unanswerable questions (higher is better) and false refusals on answerable;
* latency (mean, p50, p95).

Writes results.json, report.md, report.html and chart.png into the output folder.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import re
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rag.answer import Answerer
from rag.config import Workspace
from rag.errors import AuditError, ConfigError, RaftsmithError

REFUSAL_RE = re.compile(
    r"\b(i\s+(do\s+not|don't|cannot|can't)\s+(know|find|tell|say)|not\s+(contain|mention|provide|include)\w*|"
    r"no\s+information|unable\s+to\s+(find|answer|determine)|not\s+(in|found\s+in)\s+the\s+(documents?|context)|"
    r"(is|are)\s+not\s+(mentioned|specified|stated|given)|unknown)\b",
    re.IGNORECASE,
)
_TOKEN_RE = re.compile(r"[a-z0-9]+(?:[./:_-][a-z0-9]+)*")


@dataclass
class EvalItem:
    id: str
    question: str
    answer: str | None
    unanswerable: bool = False
    oracle_chunk_ids: list[str] = field(default_factory=list)
    origin: str = ""


# --- metrics (pure) ------------------------------------------------------------------------

def normalize(text: str) -> str:
    t = text.lower().replace("`", "").replace("*", "")
    t = re.sub(r"\s+", " ", t).strip()
    return t.strip(" .,;:!?\"'()[]")


def tokens(text: str) -> list[str]:
    return _TOKEN_RE.findall(text.lower())


def token_f1(prediction: str, reference: str) -> float:
    p, r = tokens(prediction), tokens(reference)
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


_ARTICLES = frozenset({"a", "an", "the"})


_EDGE_PUNCT = "\"'()[]{}<>.,;:!?*`"


def _squad_tokens(text: str) -> list[str]:
    """Lowercase words with punctuation stripped at their edges only, articles removed.

    Punctuation inside a word is kept: "10.74.0.7" and "10.7.40.7", or "OV-FAN-2.7" and
    "OV-FAN-27", are different answers (SQuAD's deletion of all punctuation would merge them).
    """
    words = (w.strip(_EDGE_PUNCT) for w in text.lower().split())
    return [w for w in words if w and w not in _ARTICLES]


def exact_match(prediction: str, reference: str) -> bool:
    ref = _squad_tokens(reference)
    return bool(ref) and _squad_tokens(prediction) == ref


def contains_match(prediction: str, reference: str) -> bool:
    """The normalized reference occurs in the prediction as whole words ("640" is not in "6400")."""
    return _contains_words(normalize(prediction), normalize(reference))


def _contains_words(text: str, ref: str) -> bool:
    """``ref`` in ``text`` with no letter or digit glued to either end (both already normalized)."""
    return bool(ref) and re.search(rf"(?<![^\W_]){re.escape(ref)}(?![^\W_])", text) is not None


# Units a short answer may spell out or glue to its number: "30 seconds", "30s" and "30 s" are
# one answer. Keys are the spellings (after lowercasing), values the canonical unit token.
_UNITS = {
    "s": "s", "sec": "s", "secs": "s", "second": "s", "seconds": "s",
    "ms": "ms", "msec": "ms", "millisecond": "ms", "milliseconds": "ms",
    "min": "min", "mins": "min", "minute": "min", "minutes": "min",
    "h": "h", "hr": "h", "hrs": "h", "hour": "h", "hours": "h",
    "d": "d", "day": "d", "days": "d",
    "%": "%", "percent": "%", "pct": "%",
    "b": "b", "byte": "b", "bytes": "b", "kb": "kb", "kib": "kib", "mb": "mb", "mib": "mib",
    "gb": "gb", "gib": "gib", "tb": "tb",
    "hz": "hz", "khz": "khz", "mhz": "mhz", "ghz": "ghz",
    "v": "v", "volt": "v", "volts": "v", "mv": "mv", "a": "a", "amp": "a", "amps": "a", "ma": "ma",
    "w": "w", "watt": "w", "watts": "w", "kw": "kw",
    "mm": "mm", "cm": "cm", "m": "m", "meter": "m", "meters": "m", "metre": "m", "metres": "m", "km": "km",
    "c": "c", "°c": "c", "celsius": "c", "f": "f", "°f": "f",
    "nm": "nm", "kg": "kg", "g": "g", "bar": "bar", "psi": "psi", "rpm": "rpm",
}
_NUM_UNIT_RE = re.compile(r"^(\d+(?:[.,]\d+)*)([a-z%°]+)$")
_THOUSANDS_RE = re.compile(r"^\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_STOPWORDS = frozenset(
    ["a", "an", "the", "is", "are", "was", "were", "be", "been", "of", "to", "in", "on", "at", "for", "by", "with", "and", "or", "it", "its", "this", "that", "as", "from", "which", "who", "what", "when", "where", "how", "set", "default", "value"]
)
_DASHES = str.maketrans({"\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-", "\u2212": "-",
                         "\u00a0": " ", "\u202f": " ", "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})


def content_tokens(text: str) -> list[str]:
    """Words and numbers of an answer with format taken out, for the content match.

    Case, markdown, edge punctuation, articles and unicode dashes are ignored; "7,431" is
    7431; a unit glued to its number is split from it and unit spellings are unified
    ("30s", "30 sec" and "30 seconds" are the tokens 30, s). Punctuation inside a token is
    kept: "10.74.0.7" is not "10.7.40.7".
    """
    out: list[str] = []
    for w in _squad_tokens(text.translate(_DASHES).replace("`", " ").replace("**", " ")):
        if _THOUSANDS_RE.match(w):
            w = w.replace(",", "")
        m = _NUM_UNIT_RE.match(w)
        if m and m.group(2) in _UNITS:
            out += [m.group(1), _UNITS[m.group(2)]]
            continue
        out.append(_UNITS.get(w, w) if out and _is_number(out[-1]) else w)
    return out


def _is_number(tok: str) -> bool:
    return bool(re.fullmatch(r"\d+(?:[.,]\d+)*", tok))


def correct_match(prediction: str, reference: str) -> bool:
    """The headline metric: the answer states the reference's content, in any wording.

    Every content word and number of the reference appears in the (extracted) answer as a
    whole token, after :func:`content_tokens`; a reference made only of stopwords must
    appear as a run. "The relay listens on TCP port 7431." is right for "7431"; "6400" is
    not "640"; extra words around the answer cost nothing, a missing or different number does.
    """
    ref = content_tokens(reference)
    if not ref:
        return False
    pred = content_tokens(prediction)
    key = [t for t in ref if t not in _STOPWORDS]
    if not key:
        n = len(ref)
        return any(pred[i:i + n] == ref for i in range(len(pred) - n + 1))
    have = set(pred)
    return all(t in have for t in key)


def is_refusal(text: str) -> bool:
    return bool(REFUSAL_RE.search(text))


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    idx = min(len(s) - 1, max(0, round(q * (len(s) - 1))))
    return s[idx]


# --- questions -----------------------------------------------------------------------------

def load_question_file(path: Path) -> list[EvalItem]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"Cannot read question file {path}: {err}") from None
    groups: list[Any]
    if isinstance(data, dict) and "questions" in data:
        groups = data["questions"] or []
    elif isinstance(data, list):
        groups = data
    else:
        raise ConfigError(f"{path}: expected 'questions:' with a list of items or categories (see domain_questions/).")
    items: list[EvalItem] = []

    def add(item: Any) -> None:
        if isinstance(item, str):
            item = {"question": item}
        if not isinstance(item, dict) or not isinstance(item.get("question"), str):
            raise ConfigError(f"{path}: every item needs a 'question' string (got {item!r})")
        ans = item.get("answer")
        unans = bool(item.get("unanswerable")) or ("answer" in item and ans is None)
        qid = str(item.get("id") or f"q{len(items) + 1}")
        items.append(EvalItem(qid, item["question"], None if ans is None else str(ans), unans, origin=str(path.name)))

    for g in groups:
        if isinstance(g, dict) and "items" in g:
            for it in g["items"] or []:
                add(it)
        else:
            add(g)
    return items


def load_eval_split(path: Path) -> list[EvalItem]:
    items = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            meta = json.loads(line)["meta"]
            items.append(EvalItem(str(meta.get("id") or f"row{n}"), meta["question"], meta.get("answer"),
                                  meta.get("answer") is None, list(meta.get("oracle_chunk_ids") or []), path.name))
        except (ValueError, KeyError, TypeError):
            raise ConfigError(f"{path}:{n} is not a training row with meta.question; regenerate with 'raftsmith generate'.") from None
    return items


def default_questions(ws: Workspace) -> list[EvalItem]:
    items: list[EvalItem] = []
    split = ws.training_dir / f"{ws.config.corpus.name}.eval.jsonl"
    if split.is_file():
        items += load_eval_split(split)
    for f in sorted((ws.root / "domain_questions").glob("*.y*ml")):
        try:
            holdout = bool((yaml.safe_load(f.read_text(encoding="utf-8")) or {}).get("holdout"))
        except (yaml.YAMLError, AttributeError):
            holdout = False
        if holdout:
            items += load_question_file(f)
    if not items:
        raise ConfigError(f"No evaluation questions: no {split} and no holdout question file in domain_questions/. "
                          "Run 'raftsmith generate' (it writes the eval split) or pass --questions FILE.")
    return items


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

@dataclass
class EvalReport:
    out_dir: Path
    summary: list[dict[str, Any]]
    rows: list[dict[str, Any]]
    probe: dict[str, Any] | None = None  # the forgetting probe, when run

    def table(self) -> list[dict[str, Any]]:
        return self.summary


def _score(item: EvalItem, res: Any) -> dict[str, Any]:
    pred = res.answer
    refused = bool(res.refused) or is_refusal(res.raw)
    cited = [c.chunk_id for c in res.citations]
    row: dict[str, Any] = {"id": item.id, "question": item.question, "reference": item.answer,
                           "unanswerable": item.unanswerable, "answer": pred, "raw": res.raw, "refused": refused,
                           "latency_ms": round(res.latency_ms, 1), "cited": cited, "oracle": item.oracle_chunk_ids,
                           "retrieved": [c.chunk_id for c in res.retrieved]}
    if not item.unanswerable and item.answer:
        row["correct"] = correct_match(pred, item.answer)
        row["exact"] = exact_match(pred, item.answer)
        row["contains"] = contains_match(pred, item.answer)
        row["f1"] = round(token_f1(pred, item.answer), 4)
        row["oracle_retrieved"] = bool(set(item.oracle_chunk_ids) & set(row["retrieved"])) if item.oracle_chunk_ids else None
        row["citation_correct"] = bool(set(cited) & set(item.oracle_chunk_ids)) if (res.rag and item.oracle_chunk_ids) else None
    return row


# --- the forgetting probe ----------------------------------------------------------------------

@dataclass
class ProbeItem:
    id: str
    question: str
    answers: list[str]


def load_probe(path: Path | None = None) -> list[ProbeItem]:
    """The packaged general-knowledge questions (rag/data/general_knowledge.yaml), or ``path``."""
    path = path or Path(__file__).resolve().parent / "data" / "general_knowledge.yaml"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"Cannot read the forgetting probe {path}: {err}") from None
    items = [ProbeItem(str(it["id"]), str(it["question"]), [str(a) for a in it["answers"]])
             for g in data["questions"] for it in g["items"]]
    if not items or any(not it.answers for it in items):
        raise ConfigError(f"{path}: every probe item needs an id, a question and a list of answers.")
    return items


def probe_correct(prediction: str, answers: Sequence[str]) -> bool:
    return any(correct_match(prediction, a) for a in answers)


def run_probe(engine: Answerer, models: Sequence[str], backend: str | None = None,
              progress: Callable[[str], None] | None = None, max_tokens: int = 24,
              limit: int | None = None) -> dict[str, Any]:
    """General questions closed book through each model: what tuning made the model forget.

    ``retention`` of a model is the share of the base model's right answers that it still
    gets right (1.0 = nothing the base knew was lost); ``right`` counts each model's own.
    """
    items = load_probe()[:limit] if limit else load_probe()
    right: dict[str, set[str]] = {}
    answers: dict[str, dict[str, str]] = {}
    for model in models:
        right[model], answers[model] = set(), {}
        for i, it in enumerate(items, start=1):
            if progress and (i == 1 or i % 20 == 0 or i == len(items)):
                progress(f"{model} forgetting probe {i}/{len(items)}")
            res = engine.answer(it.question, model=model, backend=backend, rag=False, event="eval",
                                max_tokens=max_tokens, extra={"probe_item": it.id})
            answers[model][it.id] = res.answer
            if probe_correct(res.answer, it.answers):
                right[model].add(it.id)
    out: dict[str, Any] = {"n": len(items), "max_tokens": max_tokens,
                           "right": {m: len(r) for m, r in right.items()}, "retention": {}}
    base = right.get("base")
    for model, got in right.items():
        if base is not None and model != "base":
            out["retention"][model] = round(len(got & base) / len(base), 4) if base else None
    out["rows"] = [{"id": it.id, "question": it.question, "answers": it.answers,
                    **{f"{m}_answer": answers[m][it.id] for m in models},
                    **{f"{m}_right": it.id in right[m] for m in models}} for it in items]
    return out


def summarize(rows: list[dict[str, Any]], model: str, rag: bool) -> dict[str, Any]:
    ans = [r for r in rows if not r["unanswerable"] and r.get("reference")]
    una = [r for r in rows if r["unanswerable"]]
    cit = [r for r in ans if r.get("citation_correct") is not None]
    lat = [r["latency_ms"] for r in rows]

    def rate(xs: list[Any]) -> float | None:
        return round(sum(1 for x in xs if x) / len(xs), 4) if xs else None

    return {
        "model": model, "rag": rag, "n": len(rows), "answerable": len(ans), "unanswerable": len(una),
        "correct": rate([r.get("correct") for r in ans]), "exact": rate([r["exact"] for r in ans]), "contains": rate([r.get("contains") for r in ans]), "f1": round(statistics.fmean(r["f1"] for r in ans), 4) if ans else None,
        "citation_accuracy": rate([r["citation_correct"] for r in cit]),
        "oracle_recall": rate([r["oracle_retrieved"] for r in ans if r.get("oracle_retrieved") is not None]) if rag else None,
        "refusal_unanswerable": rate([r["refused"] for r in una]),
        # of the questions the model did not answer right (unanswerable ones included), the share
        # it answered anyway instead of saying it does not know: invented or stale domain facts
        "confident_wrong": rate([not r["refused"] for r in [*una, *(a for a in ans if not a.get("correct"))]]),
        "false_refusal": rate([r["refused"] for r in ans]),
        "latency_mean_ms": round(statistics.fmean(lat), 1) if lat else None,
        "latency_p50_ms": round(percentile(lat, 0.5), 1), "latency_p95_ms": round(percentile(lat, 0.95), 1),
    }


def _question_files(p: Path) -> list[Path]:
    """A question file, or the question files (*.yaml, *.yml, *.jsonl) directly in a folder."""
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix in (".yaml", ".yml", ".jsonl"))
        if not files:
            raise ConfigError(f"Question folder {p} holds no *.yaml or *.jsonl files; pass a question file instead.")
        return files
    if not p.is_file():
        raise ConfigError(f"Question file {p} does not exist; pass a domain_questions/*.yaml file, "
                          "an eval split (*.jsonl) or a folder of them.")
    return [p]


def load_items(ws: Workspace, questions: Sequence[str | Path] | None = None, limit: int | None = None) -> list[EvalItem]:
    """Items from question YAML / eval JSONL files, or the workspace's default eval questions."""
    items: list[EvalItem] = []
    for q in questions or []:
        # a path typed on the command line is taken from the current folder when it is there,
        # else from the workspace root (config values and the defaults are root-relative)
        given = Path(q).expanduser()
        for p in _question_files(given if given.exists() else ws.path(q)):
            items += load_eval_split(p) if p.suffix == ".jsonl" else load_question_file(p)
    if not questions:
        items = default_questions(ws)
    return items[:limit] if limit else items


def retrieval_recall(ws: Workspace, items: Sequence[EvalItem], k: int | None = None,
                     modes: Sequence[str] = ("dense", "bm25", "hybrid")) -> dict[str, Any]:
    """Recall@k of each retrieval mode over the answerable items, with no model involved.

    A question counts as found when one of its top-k chunks is an oracle chunk (eval split
    rows) or contains the normalized reference answer (question YAML items). This is the
    ceiling RAG answers can reach with ``chat.top_k = k`` (after the ``chat.min_score``
    relevance gate, as in answering): measure it on your own question set to choose ``chat.mode``.
    """
    from rag.answer import split_relevant
    from rag.retrieve import Retriever

    k = k or ws.config.chat.top_k
    min_score = ws.config.chat.min_score
    answerable = [it for it in items if not it.unanswerable and it.answer]
    if not answerable:
        raise ConfigError("No answerable questions to measure retrieval with; give a question file with answers.")
    retriever = Retriever.from_workspace(ws)
    try:
        recall: dict[str, float] = {}
        for mode in modes:
            results = retriever.search_many([it.question for it in answerable], k=k, mode=mode, dense_scores=True)
            found = 0
            for it, hits in zip(answerable, results, strict=True):
                chunks, _below = split_relevant(hits, min_score)  # what an answer would be given
                ref = normalize(it.answer or "")
                ids = {c.chunk_id for c in chunks}
                if set(it.oracle_chunk_ids) & ids or any(_contains_words(normalize(c.text), ref) for c in chunks):
                    found += 1
            recall[mode] = round(found / len(answerable), 4)
    finally:
        retriever.close()
    best = max(recall, key=lambda m: (recall[m], m == "hybrid"))  # ties go to hybrid
    return {"k": k, "questions": len(answerable), "recall": recall, "best": best}


def run_eval(ws: Workspace, models: Sequence[str] = ("base", "tuned"), rag_modes: Sequence[bool] = (True, False),
             questions: Sequence[str | Path] | None = None, out_dir: str | Path | None = None, backend: str | None = None,
             limit: int | None = None, progress: Callable[[str], None] | bool | None = None,
             judge: bool = False, forgetting: bool = False, probe_limit: int | None = None) -> EvalReport:
    """Every question through models x rag_modes; writes results.json, report.md/.html, chart.png.

    ``progress``: a callable taking one status line, True (print to stderr) or None/False.
    ``forgetting``: also ask the packaged general-knowledge probe closed book (needs 'base' among
    the models for retention).
    """
    if progress is True:
        import sys

        progress = lambda msg: print(f"  {msg}", file=sys.stderr)  # noqa: E731
    items = load_items(ws, questions, limit)
    out = Path(out_dir) if out_dir else ws.state_dir / "eval" / dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out.mkdir(parents=True, exist_ok=True)
    engine = Answerer(ws)
    try:
        if any(rag_modes):
            attach_oracles(engine, items)
        all_rows: list[dict[str, Any]] = []
        summary: list[dict[str, Any]] = []
        for model in models:
            ref, _ = engine.backend(model, backend)  # resolve (and load) before timing anything
            for rag in rag_modes:
                rows = []
                for i, it in enumerate(items, start=1):
                    if progress:
                        progress(f"{model} {'rag' if rag else 'no-rag'} {i}/{len(items)}: {it.id}")
                    try:
                        res = engine.answer(it.question, model=model, backend=backend, rag=rag, event="eval",
                                            extra={"eval_item": it.id})
                    except AuditError:
                        raise
                    except RaftsmithError as err:  # one failing question is a row, not the end of the run
                        rows.append({"id": it.id, "question": it.question, "reference": it.answer, "unanswerable": it.unanswerable,
                                     "answer": "", "raw": "", "refused": False, "latency_ms": 0.0, "cited": [], "oracle": it.oracle_chunk_ids,
                                     "retrieved": [], "error": str(err), **({} if it.unanswerable else {"correct": False, "exact": False, "contains": False, "f1": 0.0})})
                        continue
                    rows.append(_score(it, res))
                for r in rows:
                    r.update(model=model, model_label=ref.label, rag=rag)
                all_rows += rows
                summary.append(summarize(rows, model, rag) | {"model_label": ref.label, "digest": ref.digest})
        probe = run_probe(engine, models, backend, progress or None, limit=probe_limit) if forgetting else None
    finally:
        engine.close()
    if judge:
        from rag.judge import judge_rows

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


# --- outputs -------------------------------------------------------------------------------

COLUMNS = [("model", "model"), ("rag", "RAG"), ("n", "n"), ("correct", "correct"), ("exact", "strict exact"), ("contains", "contains"),
           ("f1", "F1"), ("citation_accuracy", "citations ok"), ("refusal_unanswerable", "refuses unanswerable"),
           ("false_refusal", "false refusals"), ("confident_wrong", "answers anyway when wrong"),
           ("general_right", "general knowledge"), ("retention", "retention"),
           ("judge_score", "judge"), ("latency_p50_ms", "p50 ms")]


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.2f}" if v <= 1.0 else f"{v:.0f}"
    return str(v)


def write_outputs(report: EvalReport, ws: Workspace) -> None:
    out = report.out_dir
    meta = {"created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "workspace": str(ws.root),
            "corpus": ws.config.corpus.name, "backend": ws.config.chat.backend, "top_k": ws.config.chat.top_k,
            "min_score": ws.config.chat.min_score}
    (out / "results.json").write_text(json.dumps({"meta": meta, "summary": report.summary, "rows": report.rows,
                                                  "forgetting_probe": report.probe},
                                                 indent=2, ensure_ascii=False), encoding="utf-8")
    head = "| " + " | ".join(h for _, h in COLUMNS) + " |"
    sep = "|" + "---|" * len(COLUMNS)
    body = ["| " + " | ".join(_fmt(s.get(k)) for k, _ in COLUMNS) + " |" for s in report.summary]
    per_q = ["| model | RAG | id | reference | answer | correct | exact | cited oracle | refused |", "|---|---|---|---|---|---|---|---|---|"]
    for r in report.rows:
        ans = str(r["answer"]).replace("|", "\\|").replace("\n", " ")[:80]
        per_q.append(f"| {r['model']} | {_fmt(r['rag'])} | {r['id']} | {_fmt(r['reference'])} | {ans} | "
                     f"{_fmt(r.get('correct'))} | {_fmt(r.get('exact'))} | {_fmt(r.get('citation_correct'))} | {_fmt(r['refused'])} |")
    probe_md: list[str] = []
    probe_html = ""
    if report.probe is not None:
        p = report.probe
        line = (f"{p['n']} general questions, closed book: right " + ", ".join(f"{m} {n}" for m, n in p["right"].items())
                + ("; retention of the base model's right answers " + ", ".join(f"{m} {_fmt(v)}" for m, v in p["retention"].items())
                   if p["retention"] else ""))
        probe_md = ["## Forgetting probe", "", line + ".", ""]
        probe_html = f"<h2>Forgetting probe</h2><p>{html.escape(line)}.</p>"
    md = [f"# raftsmith eval: {ws.config.corpus.name}", "", f"Created {meta['created_at']}.", "", head, sep, *body, "",
          "![metrics](chart.png)", "", *probe_md, "## Per question", "", *per_q, ""]
    (out / "report.md").write_text("\n".join(md), encoding="utf-8")
    rows_html = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(s.get(k)))}</td>" for k, _ in COLUMNS) + "</tr>" for s in report.summary)
    q_html = "".join(
        f"<tr><td>{html.escape(r['model'])}</td><td>{_fmt(r['rag'])}</td><td>{html.escape(r['id'])}</td>"
        f"<td>{html.escape(_fmt(r['reference']))}</td><td>{html.escape(str(r['answer'])[:200])}</td>"
        f"<td>{_fmt(r.get('correct'))}</td><td>{_fmt(r.get('exact'))}</td><td>{_fmt(r.get('citation_correct'))}</td><td>{_fmt(r['refused'])}</td></tr>"
        for r in report.rows)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>raftsmith eval</title><style>"
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}"
            f"</style></head><body><h1>raftsmith eval: {html.escape(ws.config.corpus.name)}</h1><p>Created {meta['created_at']}</p>"
            "<table><tr>" + "".join(f"<th>{h}</th>" for _, h in COLUMNS) + f"</tr>{rows_html}</table>"
            f"<p><img src='chart.png' alt='metrics chart'></p>{probe_html}<h2>Per question</h2><table><tr><th>model</th><th>RAG</th><th>id</th>"
            f"<th>reference</th><th>answer</th><th>correct</th><th>exact</th><th>cited oracle</th><th>refused</th></tr>{q_html}</table></body></html>")
    (out / "report.html").write_text(page, encoding="utf-8")
    _chart(report, out / "chart.png")


def _chart(report: EvalReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [("correct", "correct"), ("exact", "strict exact"), ("contains", "contains"), ("f1", "F1"),
               ("citation_accuracy", "citations ok"), ("refusal_unanswerable", "refuses unanswerable")]
    if report.probe is not None:
        metrics.append(("retention", "retention"))
    fig, ax = plt.subplots(figsize=(8, 4))
    n = max(1, len(report.summary))
    width = 0.8 / n
    for i, s in enumerate(report.summary):
        vals = [s.get(k) or 0.0 for k, _ in metrics]
        ax.bar([x + i * width for x in range(len(metrics))], vals, width, label=f"{s['model']} {'RAG' if s['rag'] else 'no RAG'}")
    ax.set_xticks([x + (n - 1) * width / 2 for x in range(len(metrics))], [lbl for _, lbl in metrics])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("rate")
    ax.set_title("raftsmith eval")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

