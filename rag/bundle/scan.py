"""The secret scan of bundle create: nothing that looks like a credential enters a bundle.

Text that looks like an API key, a private key or a value currently held in the
environment/keyring is refused. Findings name the file and the kind of secret, never the
secret itself.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from rag.errors import IntegrityError

TEXT_SUFFIXES = {".yaml", ".yml", ".json", ".jsonl", ".md", ".txt", ".toml", ".cfg", ".ini", ".env", ".tmpl"}
MAX_SCAN_BYTES = 32 * 1024 * 1024

_ASSIGNMENT = re.compile(
    r"""["']?\b(api[_-]?key|secret[_-]?key|client[_-]?secret|access[_-]?token|auth[_-]?token|password|passwd)\b["']?"""
    r"""\s*[:=]\s*["']?([^\s"',}\]#]*)""",
    re.IGNORECASE,
)
_EMPTY_VALUES = {"", "null", "none", "~", "''", '""', "<redacted>", "redacted", "false"}


@dataclass(frozen=True)
class Finding:
    """One secret-looking thing: its kind, never its value."""

    label: str  # "an AWS access key id (AKIA...)"
    names: tuple[str, ...]  # what --allow-secret accepts for it: a shape id, or the key's names
    start: int = 0
    end: int = 0


def live_secrets(extra_key_names: list[str] | None = None) -> dict[str, tuple[str, ...]]:
    """Secrets this machine holds now, value -> the names they are held under (an env var,
    a keyring name); never logged.

    Read through rag.secrets, whose keyring calls time out instead of hanging on a headless
    machine; an unusable keyring is skipped (the shape checks still run).
    """
    from rag.errors import KeyringUnavailable
    from rag.providers import key_env_vars
    from rag.secrets import KNOWN_NAMES, keyring_get

    found: dict[str, list[str]] = {}
    for var in key_env_vars():
        found.setdefault(os.environ.get(var, ""), []).append(var)
    for name in dict.fromkeys([*KNOWN_NAMES, *(n for n in (extra_key_names or []) if n)]):
        try:
            found.setdefault(keyring_get(name) or "", []).append(name)
        except KeyringUnavailable:
            break  # the keyring does not answer; asking again for each name would only wait longer
        except Exception:  # noqa: BLE001 - a broken keyring backend must not block bundling
            continue
    # Very short values would match by accident everywhere; real keys are long.
    return {v: tuple(names) for v, names in found.items() if len(v) >= 8}


def live_secret_values(extra_key_names: list[str] | None = None) -> list[str]:
    """The values of :func:`live_secrets`, sorted."""
    return sorted(live_secrets(extra_key_names))


def _live_map(live: list[str] | dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    return live if isinstance(live, dict) else {v: () for v in live}


def _live_label(names: tuple[str, ...]) -> str:
    held = "an API key currently stored in this machine's environment or keyring"
    return f"{held} ({' / '.join(names)})" if names else held


def find_secrets(text: str, live: list[str] | dict[str, tuple[str, ...]], assignments: bool = True,
                 allow: frozenset[str] = frozenset()) -> list[Finding]:
    """Every secret-looking thing in ``text`` not named in ``allow``, in text order.

    One span is reported once, by its most specific finding: a live value first, then a key
    shape (table order), then an assignment. A span covered by an allowed live key is not
    reported under its shape either.
    """
    from rag.secrets import KEY_SHAPES

    ranked: list[tuple[Finding, bool]] = []  # (finding, allowed)
    for value, names in _live_map(live).items():
        start = text.find(value)
        while start != -1:
            ranked.append((Finding(_live_label(names), names, start, start + len(value)),
                           bool(names and allow.intersection(names))))
            start = text.find(value, start + len(value))
    for shape in KEY_SHAPES:
        ranked.extend((Finding(shape.label, (shape.id,), m.start(), m.end()), shape.id in allow)
                      for m in shape.pattern.finditer(text))
    if assignments:
        for m in _ASSIGNMENT.finditer(text):
            if m.group(2).strip().lower() not in _EMPTY_VALUES:
                ranked.append((Finding(f"a non-empty '{m.group(1)}' value", ("assignment",), m.start(2), m.end(2)),
                               False))
    taken: list[tuple[int, int]] = []
    out: list[Finding] = []
    for finding, allowed in ranked:
        if any(finding.start < e and s < finding.end for s, e in taken):
            continue
        taken.append((finding.start, finding.end))
        if not allowed:
            out.append(finding)
    return sorted(out, key=lambda f: f.start)


def find_secret(text: str, live: list[str] | dict[str, tuple[str, ...]], assignments: bool = True) -> str | None:
    """Describe the first secret-looking thing in ``text`` (never the value), or None."""
    from rag.secrets import KEY_SHAPES

    # Live values first: the most serious finding is the one reported.
    for value, names in _live_map(live).items():
        if value in text:
            return _live_label(names)
    for shape in KEY_SHAPES:
        if shape.pattern.search(text):
            return shape.label
    if assignments:
        for m in _ASSIGNMENT.finditer(text):
            if m.group(2).strip().lower() not in _EMPTY_VALUES:
                return f"a non-empty '{m.group(1)}' value"
    return None


def redact(text: str, findings: list[Finding]) -> str:
    """``text`` with each finding's span replaced by a mask naming its kind."""
    out, pos = [], 0
    for f in findings:
        if f.start < pos:
            continue  # overlaps one already masked
        out += [text[pos:f.start], f"[redacted {f.names[0] if f.names else 'secret'}]"]
        pos = f.end
    return "".join([*out, text[pos:]])


def is_text_member(path: str | Path) -> bool:
    p = Path(path)
    return p.suffix.lower() in TEXT_SUFFIXES or p.name in ("Modelfile", "Modelfile.adapter") or p.name.startswith("Modelfile")


def _refusal(shown_name: str, finding: Finding, where: str) -> IntegrityError:
    names = [n for n in finding.names if n != "assignment"]
    override = f", or pass --allow-secret {names[0]} if it is meant to travel" if names else ""
    return IntegrityError(
        f"refusing to bundle: {shown_name} contains {finding.label}. {where}{override}; "
        "then run bundle create again (keep API keys in the keyring: 'raftsmith keys set PROVIDER')."
    )


def scan_file_for_secrets(src: Path, shown_name: str, live: list[str] | dict[str, tuple[str, ...]],
                          assignments: bool = True, allow: frozenset[str] = frozenset()) -> None:
    """Raise IntegrityError naming ``shown_name`` if the file holds a secret-looking string."""
    if src.stat().st_size > MAX_SCAN_BYTES:
        return
    text = src.read_bytes().decode("utf-8", errors="replace")
    scan_text_for_secrets(text, shown_name, live, assignments, allow)


def scan_text_for_secrets(text: str, shown_name: str, live: list[str] | dict[str, tuple[str, ...]],
                          assignments: bool = True, allow: frozenset[str] = frozenset()) -> None:
    found = find_secrets(text, live, assignments, allow)
    if found:
        raise _refusal(shown_name, found[0], "Remove it from that file")


def scan_store_for_secrets(db: Path, shown_name: str, live: dict[str, tuple[str, ...]],
                           allow: frozenset[str] = frozenset()) -> None:
    """Refuse a SQLite index store whose chunk texts, headings or document context hold a secret.

    Documents legitimately say "password: ...", so only live values and key shapes count here.
    The finding names the document (its source path) and the kind, never the value.
    """
    import sqlite3

    con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    try:
        cols = {r[1] for r in con.execute("PRAGMA table_info(chunks)")}
        context = "context" if "context" in cols else "''"  # format-1 stores have no context column
        rows = con.execute(f"SELECT source, heading, text, {context} FROM chunks")
        for source, heading, text, ctx in rows:
            found = find_secrets(f"{heading}\n{text}\n{ctx}", live, assignments=False, allow=allow)
            if found:
                raise _refusal(
                    f"{shown_name} (a chunk of {source!s})", found[0],
                    "Remove it from that document and run 'raftsmith ingest', or set corpus.redact: true "
                    "in raftsmith.yaml and re-ingest (stored chunks then hold a mask)")
    except sqlite3.DatabaseError:
        return  # not a raftsmith store (no chunks table): it holds no chunk texts to scan
    finally:
        con.close()
