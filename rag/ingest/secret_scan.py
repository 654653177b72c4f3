"""Secrets inside documents, found at ingest: warn (file and kind, never the value), and with
``corpus.redact: true`` store a mask instead of the secret.

The same finder as the bundle scan (:mod:`rag.bundle.scan`): key shapes from
:data:`rag.secrets.KEY_SHAPES` and the live values held in this machine's environment and
keyring. "password: ..." lines are not flagged here: documentation is full of them.
A key split across two chunks (only possible inside one over-long unbroken token run) is
not seen.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rag.bundle.scan import Finding, find_secrets, live_secrets, redact

if TYPE_CHECKING:
    from rag.config import Workspace
    from rag.ingest.chunker import ChunkSpec

log = logging.getLogger(__name__)

# Reading the keyring can take seconds on a headless machine; ingest asks once a minute at most.
_LIVE_TTL_S = 60.0
_live_cache: dict[tuple[str, ...], tuple[float, dict[str, tuple[str, ...]]]] = {}


def _live(ws: Workspace) -> dict[str, tuple[str, ...]]:
    import os

    from rag.providers import key_env_vars

    names = (ws.config.teacher.key_name or "", ws.config.audit.hmac_key_name or "")
    key = (*names, *(os.environ.get(v, "") for v in key_env_vars()))
    hit = _live_cache.get(key)
    if hit is not None and time.monotonic() - hit[0] < _LIVE_TTL_S:
        return hit[1]
    value = live_secrets(list(names))
    _live_cache.clear()  # one entry: the values are secrets, keep as few copies as possible
    _live_cache[key] = (time.monotonic(), value)
    return value


def scan_chunks(ws: Workspace, source: str, specs: Sequence[ChunkSpec]) -> list[ChunkSpec]:
    """Warn about secrets in ``source``'s chunks; with corpus.redact, return them masked."""
    live = _live(ws)
    masking = ws.config.corpus.redact
    kinds: dict[str, int] = {}
    out = []
    for spec in specs:
        in_text = find_secrets(spec.text, live, assignments=False)
        in_heading = find_secrets(spec.heading, live, assignments=False)
        for f in (*in_text, *in_heading):
            kinds[f.label] = kinds.get(f.label, 0) + 1
        if masking and (in_text or in_heading):
            spec = dataclasses.replace(spec, text=redact(spec.text, in_text), heading=redact(spec.heading, in_heading))
        out.append(spec)
    if kinds:
        what = ", ".join(f"{label} ({n}x)" for label, n in kinds.items())
        if masking:
            log.warning("%s holds %s; masked in the index (corpus.redact is on)", source, what)
        else:
            log.warning("%s holds %s; stored as is. Set corpus.redact: true in raftsmith.yaml to mask it in "
                        "the index, or remove it from the document ('bundle create' refuses it)", source, what)
    return out


__all__ = ["Finding", "scan_chunks"]
