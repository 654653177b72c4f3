"""Metrics for ``raftsmith eval``: pure functions of an answer and its reference.

Per (model, mode):

* exact: the extracted answer equals the reference after SQuAD-style normalization (case,
  punctuation, articles and spacing ignored), so "<ANSWER>: 7431" counts and a paragraph
  that happens to contain 7431 does not;
* contains: the normalized reference appears somewhere in the extracted answer (lenient:
  a model that rambles over the context scores here without answering);
* f1: token F1 between the extracted answer and the reference (SQuAD style);
* citation accuracy: a cited chunk is an oracle chunk (eval split ids, or for YAML items the
  best-ranked chunk that contains the reference answer);
* refusal rate on unanswerable questions (higher is better) and false refusals on answerable;
* latency (mean, p50, p95).
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rag.evaluate.questions import EvalItem

REFUSAL_RE = re.compile(
    r"\b(i\s+(do\s+not|don't|cannot|can't)\s+(know|find|tell|say)|not\s+(contain|mention|provide|include)\w*|"
    r"no\s+information|unable\s+to\s+(find|answer|determine)|not\s+(in|found\s+in)\s+the\s+(documents?|context)|"
    r"(is|are)\s+not\s+(mentioned|specified|stated|given)|unknown)\b",
    re.IGNORECASE,
)
_TOKEN_RE = re.compile(r"[a-z0-9]+(?:[./:_-][a-z0-9]+)*")


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
    return contains_words(normalize(prediction), normalize(reference))


def contains_words(text: str, ref: str) -> bool:
    """``ref`` in ``text`` with no letter or digit glued to either end (both already normalized)."""
    return bool(ref) and re.search(rf"(?<![^\W_]){re.escape(ref)}(?![^\W_])", text) is not None


def is_refusal(text: str) -> bool:
    return bool(REFUSAL_RE.search(text))


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    idx = min(len(s) - 1, max(0, round(q * (len(s) - 1))))
    return s[idx]


# --- scoring a run ------------------------------------------------------------------------

def score_row(item: EvalItem, res: Any) -> dict[str, Any]:
    pred = res.answer
    refused = bool(res.refused) or is_refusal(res.raw)
    cited = [c.chunk_id for c in res.citations]
    row: dict[str, Any] = {"id": item.id, "question": item.question, "reference": item.answer,
                           "unanswerable": item.unanswerable, "answer": pred, "raw": res.raw, "refused": refused,
                           "latency_ms": round(res.latency_ms, 1), "cited": cited, "oracle": item.oracle_chunk_ids,
                           "retrieved": [c.chunk_id for c in res.retrieved]}
    if not item.unanswerable and item.answer:
        row["exact"] = exact_match(pred, item.answer)
        row["contains"] = contains_match(pred, item.answer)
        row["f1"] = round(token_f1(pred, item.answer), 4)
        row["oracle_retrieved"] = bool(set(item.oracle_chunk_ids) & set(row["retrieved"])) if item.oracle_chunk_ids else None
        row["citation_correct"] = bool(set(cited) & set(item.oracle_chunk_ids)) if (res.rag and item.oracle_chunk_ids) else None
    return row


def summarize(rows: list[dict[str, Any]], model: str, rag: bool) -> dict[str, Any]:
    ans = [r for r in rows if not r["unanswerable"] and r.get("reference")]
    una = [r for r in rows if r["unanswerable"]]
    cit = [r for r in ans if r.get("citation_correct") is not None]
    lat = [r["latency_ms"] for r in rows]

    def rate(xs: list[Any]) -> float | None:
        return round(sum(1 for x in xs if x) / len(xs), 4) if xs else None

    return {
        "model": model, "rag": rag, "n": len(rows), "answerable": len(ans), "unanswerable": len(una),
        "exact": rate([r["exact"] for r in ans]), "contains": rate([r.get("contains") for r in ans]), "f1": round(statistics.fmean(r["f1"] for r in ans), 4) if ans else None,
        "citation_accuracy": rate([r["citation_correct"] for r in cit]),
        "oracle_recall": rate([r["oracle_retrieved"] for r in ans if r.get("oracle_retrieved") is not None]) if rag else None,
        "refusal_unanswerable": rate([r["refused"] for r in una]),
        "false_refusal": rate([r["refused"] for r in ans]),
        "latency_mean_ms": round(statistics.fmean(lat), 1) if lat else None,
        "latency_p50_ms": round(percentile(lat, 0.5), 1), "latency_p95_ms": round(percentile(lat, 0.95), 1),
    }
