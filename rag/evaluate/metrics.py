"""Metrics for ``raftsmith eval``: pure functions of an answer and its reference.

Per (model, mode):

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
* confident_wrong: of the questions not answered right (unanswerable ones included), the
  share answered anyway instead of "I do not know";
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
        row["correct"] = correct_match(pred, item.answer)
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
