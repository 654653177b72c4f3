"""What leaves the machine: optional redaction, payload hashes, and the loopback guard.

Redaction replaces sensitive spans with numbered placeholders (``[EMAIL_1]``) before a
request is sent and puts the originals back into the teacher's reply, so quotes still match
the local documents. Every payload sent is recorded by sha256 with its redaction counts in
``.raftsmith/teacher_payloads.jsonl``: an auditor can check what was sent without the text.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from rag.errors import ConfigError
from rag.netguard import is_loopback_url
from rag.secrets import ANY_KEY

_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("key", ANY_KEY),  # the credential shapes the bundle scan also refuses
    ("email", re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")),
    ("card", re.compile(r"\b\d(?:[ -]?\d){12,18}\b")),
    ("ssn", re.compile(r"\b\d{3}-\d{2}-\d{4}\b")),
    ("ip", re.compile(r"\b(?:25[0-5]|2[0-4]\d|1?\d?\d)(?:\.(?:25[0-5]|2[0-4]\d|1?\d?\d)){3}\b|(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){2,7}[0-9A-Fa-f]{1,4}(?![\w:])")),
    ("phone", re.compile(r"(?<![\w.+])(?<!\d[ .-])\+?\d{1,3}[ .-]?\(?\d{2,4}\)?[ .-]\d{3,4}[ .-]\d{3,4}(?!\w)(?![ .-]?\d)")),
    ("token", re.compile(r"\b[0-9a-fA-F]{32,}\b|\b(?=[A-Za-z0-9+/_-]*\d)(?=[A-Za-z0-9+/_-]*[A-Z])(?=[A-Za-z0-9+/_-]*[a-z])[A-Za-z0-9+/_-]{40,}={0,2}")),
]


def luhn_ok(digits: str) -> bool:
    ds = [int(c) for c in digits if c.isdigit()]
    if not 13 <= len(ds) <= 19:
        return False
    total = 0
    for i, d in enumerate(reversed(ds)):
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


@dataclass
class Redaction:
    text: str
    mapping: dict[str, str] = field(default_factory=dict)  # placeholder -> original
    counts: dict[str, int] = field(default_factory=dict)

    def restore(self, text: str) -> str:
        for ph, orig in self.mapping.items():
            text = text.replace(ph, orig)
        return text


class Redactor:
    """Replace sensitive spans with placeholders; the same value gets the same placeholder."""

    def __init__(self, deny_list: Iterable[str] = (), patterns: bool = True):
        self.patterns = _PATTERNS if patterns else []
        terms = sorted({t for t in deny_list if t.strip()}, key=len, reverse=True)
        self._deny = re.compile("|".join(re.escape(t) for t in terms), re.IGNORECASE) if terms else None

    def redact(self, text: str, red: Redaction | None = None) -> Redaction:
        red = red or Redaction(text="")
        reverse = {v: k for k, v in red.mapping.items()}

        def sub(kind: str) -> Callable[[re.Match[str]], str]:
            def repl(m: re.Match[str]) -> str:
                value = m.group(0)
                if kind == "card" and not luhn_ok(value):
                    return value
                if kind == "ip":
                    try:
                        ipaddress.ip_address(value)
                    except ValueError:
                        return value
                if value in reverse:
                    return reverse[value]
                red.counts[kind] = red.counts.get(kind, 0) + 1
                ph = f"[{kind.upper()}_{sum(1 for k in red.mapping if k.startswith(f'[{kind.upper()}_')) + 1}]"
                red.mapping[ph] = value
                reverse[value] = ph
                return ph

            return repl

        out = text
        if self._deny is not None:
            out = self._deny.sub(sub("deny"), out)
        for kind, pat in self.patterns:
            out = pat.sub(sub(kind), out)
        red.text = out
        return red

    def redact_messages(self, messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], Redaction]:
        red = Redaction(text="")
        out = []
        for m in messages:
            red = self.redact(m["content"], red)
            out.append({**m, "content": red.text})
        return out, red


# ---------------------------------------------------------------- loopback guard


def require_local(url: str | None, provider: str) -> None:
    if not is_loopback_url(url):
        raise ConfigError(
            f"--local-only (teacher.local_only) refuses the {provider} teacher at {url or 'its public endpoint'}: "
            "it is not on this machine. Use a loopback base_url (http://127.0.0.1:PORT/v1) or drop --local-only."
        )


# ---------------------------------------------------------------- payload log


class PayloadLog:
    """Sidecar JSONL: sha256 and redaction counts of every payload sent, never the text."""

    def __init__(self, path: Path | None):
        self.path = path
        self._lock = threading.Lock()

    def record(self, payload: dict[str, object], counts: dict[str, int], tag: str = "") -> str:
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()
        if self.path is not None:
            line = json.dumps({"ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "tag": tag, "sha256": digest, "redactions": counts})
            with self._lock:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(line + "\n")
                    f.flush()
                    os.fsync(f.fileno())
        return digest
