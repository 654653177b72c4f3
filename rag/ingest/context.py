"""Document context for chunks: what a chunk lacks on its own, embedded and BM25-indexed with it.

A chunk deep inside a document ("## Example" with only code under it, a table, a parameter list)
often never names what it is about: that is said once, at the top of the document. So every
chunk after the first gets the document's lead (its first words, without heading lines) and,
when its heading path does not already carry it, the document's title. The context is stored in
its own column (``chunks.context``): the chunk text that prompts and citations show is unchanged.

The context never pushes chunk text out of the embedder's window: it gets only the tokens left
after the heading and the text, and is cut at a word boundary to fit (a chunk that already fills
the window gets none, which is the right call: it carries enough text of its own).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from rag.ingest.chunker import ChunkSpec

CONTEXT_VERSION = "1"  # bump when the recipe changes: the chunking signature re-embeds every chunk
LEAD_WORDS = 20  # 20-60 words measured alike on recall (benchmarks/retrieval.py); 20 costs least
MIN_CONTEXT_TOKENS = 8  # less room than this: no context (a few words would only add noise)

_HEADING_LINE = re.compile(r"^\s*(#{1,6}\s|[=\-~^*+#`:'\"]{3,}\s*$)")


def document_lead(text: str, words: int = LEAD_WORDS) -> str:
    """The first ``words`` words of ``text``, heading lines and rst underlines left out."""
    kept = [ln for ln in text.splitlines() if ln.strip() and not _HEADING_LINE.match(ln)]
    return " ".join(" ".join(kept).split()[:words])


def embed_text(spec: ChunkSpec) -> str:
    """What the embedder sees: context, heading path, then the chunk text."""
    return "\n".join(part for part in (spec.context, spec.heading, spec.text) if part)


def add_context(specs: Sequence[ChunkSpec], title: str, count_tokens: Callable[[str], int],
                window: int, lead_words: int = LEAD_WORDS) -> list[ChunkSpec]:
    """Set ``spec.context`` on the chunks of one document (in document order); returns them."""
    specs = list(specs)
    if not specs:
        return specs
    lead = document_lead(specs[0].text, lead_words)
    for i, spec in enumerate(specs):
        parts: list[str] = []
        if title and title.lower() not in spec.heading.lower():
            parts.append(title)
        if i > 0 and lead and not spec.text.lstrip().startswith(lead[:40]):
            parts.append(lead)
        spec.context = ""
        if not parts:
            continue
        room = window - count_tokens(embed_text(spec)) - 1  # -1: the joining newline
        if room < MIN_CONTEXT_TOKENS:
            continue
        spec.context = _fit(" ".join(parts), room, count_tokens)
    return specs


def _fit(text: str, budget: int, count_tokens: Callable[[str], int]) -> str:
    """The longest word prefix of ``text`` that has at most ``budget`` tokens."""
    if count_tokens(text) <= budget:
        return text
    words = text.split()
    lo, hi = 0, len(words)  # invariant: words[:lo] fits, words[:hi+1] does not (or hi == len)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count_tokens(" ".join(words[:mid])) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo])
