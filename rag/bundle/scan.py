"""The secret scan of bundle create: nothing that looks like a credential enters a bundle.

Text that looks like an API key, a private key or a value currently held in the
environment/keyring is refused. Findings name the file and the kind of secret, never the
secret itself.
"""

from __future__ import annotations

import os
import re
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


def live_secret_values(extra_key_names: list[str] | None = None) -> list[str]:
    """Secrets this machine holds now (env vars, raftsmith's keyring entries); never logged.

    Read through rag.secrets, whose keyring calls time out instead of hanging on a headless
    machine; an unusable keyring is skipped (the shape checks still run).
    """
    from rag.errors import KeyringUnavailable
    from rag.providers import key_env_vars
    from rag.secrets import KNOWN_NAMES, keyring_get

    values = [os.environ.get(v, "") for v in key_env_vars()]
    for name in dict.fromkeys([*KNOWN_NAMES, *(n for n in (extra_key_names or []) if n)]):
        try:
            values.append(keyring_get(name) or "")
        except KeyringUnavailable:
            break  # the keyring does not answer; asking again for each name would only wait longer
        except Exception:  # noqa: BLE001 - a broken keyring backend must not block bundling
            continue
    # Very short values would match by accident everywhere; real keys are long.
    return sorted({v for v in values if len(v) >= 8})


def find_secret(text: str, live: list[str], assignments: bool = True) -> str | None:
    """Describe the first secret-looking thing in ``text`` (never the value), or None."""
    for value in live:
        if value in text:
            return "an API key currently stored in this machine's environment or keyring"
    from rag.secrets import KEY_SHAPES

    for label, pattern in KEY_SHAPES:
        if pattern.search(text):
            return label
    if assignments:
        for m in _ASSIGNMENT.finditer(text):
            if m.group(2).strip().lower() not in _EMPTY_VALUES:
                return f"a non-empty '{m.group(1)}' value"
    return None


def is_text_member(path: str | Path) -> bool:
    p = Path(path)
    return p.suffix.lower() in TEXT_SUFFIXES or p.name in ("Modelfile", "Modelfile.adapter") or p.name.startswith("Modelfile")


def scan_file_for_secrets(src: Path, shown_name: str, live: list[str], assignments: bool = True) -> None:
    """Raise IntegrityError naming ``shown_name`` if the file holds a secret-looking string."""
    if src.stat().st_size > MAX_SCAN_BYTES:
        return
    text = src.read_bytes().decode("utf-8", errors="replace")
    scan_text_for_secrets(text, shown_name, live, assignments)


def scan_text_for_secrets(text: str, shown_name: str, live: list[str], assignments: bool = True) -> None:
    found = find_secret(text, live, assignments)
    if found is not None:
        raise IntegrityError(
            f"refusing to bundle: {shown_name} contains {found}. Remove it from that file "
            "(keep API keys in the keyring: 'raftsmith keys set PROVIDER') and run bundle create again."
        )
