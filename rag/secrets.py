"""API keys and other secrets: explicit option, then the OS keyring, then an env var.

Keys live in the keyring under service ``raftsmith`` and a user name (the provider, or
``teacher.key_name``; the audit HMAC key under ``audit.hmac_key_name``). Keyring calls run in
a worker thread with a timeout, so a headless keyring that hangs (no D-Bus session, a locked
collection waiting for a prompt) turns into :class:`KeyringUnavailable` within seconds. There
is never a silent plaintext fallback: the message names the env var or a file backend the
user can choose on purpose. Values are never logged or printed.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, TypeVar

from rag.errors import KeyringUnavailable
from rag.providers import PROVIDERS

log = logging.getLogger(__name__)

SERVICE = "raftsmith"
KEYRING_TIMEOUT_S = float(os.environ.get("RAFTSMITH_KEYRING_TIMEOUT", "5"))

# provider -> env var holding its key (None: no key needed or no standard variable)
ENV_VARS: dict[str, str | None] = {name: p.env_var for name, p in PROVIDERS.items()}
KNOWN_NAMES: tuple[str, ...] = tuple(PROVIDERS)

# The shapes of credentials, one table for the teacher-payload redaction
# (builder.generate.privacy) and the bundle scan (rag.bundle.scan). Labels are what a
# finding reports; a matched value is never shown.
# The body of a dash-style key: one run of 16+ letters, digits or underscores holding a digit
# or a capital, after optional dash-separated prefixes (sk-proj-, sk-ant-api03-, sk-or-v1-):
# hyphenated prose such as "sk-hynix-memory-roadmap-2025" is not a key.
_DASH_KEY_BODY = r"(?:[A-Za-z0-9_]*-)*(?=[a-z_]*[A-Z0-9])[A-Za-z0-9_]{16,}"


class KeyShape(NamedTuple):
    id: str  # short name, e.g. for 'bundle create --allow-secret aws-key'
    label: str  # what a finding reports
    pattern: re.Pattern[str]


KEY_SHAPES: list[KeyShape] = [
    KeyShape("openrouter-key", "an OpenRouter API key (sk-or-...)",
             re.compile(r"(?<![A-Za-z0-9])sk-or-" + _DASH_KEY_BODY)),
    KeyShape("sk-key", "an OpenAI/Anthropic-style API key (sk-/pk-/rk-...)",
             re.compile(r"(?<![A-Za-z0-9])(?:sk|pk|rk)-" + _DASH_KEY_BODY)),
    KeyShape("stripe-key", "a Stripe key (sk_live_/rk_live_...)",
             re.compile(r"\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}")),
    KeyShape("github-token", "a GitHub token (ghp_/gho_/ghs_/github_pat_)",
             re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})")),
    KeyShape("aws-key", "an AWS access key id (AKIA...)", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    KeyShape("slack-token", "a Slack token (xox...)", re.compile(r"\bxox[abpr]-[A-Za-z0-9-]{10,}")),
    KeyShape("hf-token", "a Hugging Face token (hf_...)", re.compile(r"\bhf_[A-Za-z0-9]{30,}\b")),
    # the whole block when it is there, so redaction removes the key body too
    KeyShape("private-key", "a PEM or PGP private key",
             re.compile(r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY(?: BLOCK)?-----"
                        r"(?:[\s\S]*?-----END (?:[A-Z]+ )*PRIVATE KEY(?: BLOCK)?-----)?")),
]
#: any of KEY_SHAPES, as one pattern
ANY_KEY = re.compile("|".join(f"(?:{s.pattern.pattern})" for s in KEY_SHAPES))

T = TypeVar("T")


def _fix_text(name: str, env_var: str | None) -> str:
    env = f"set {env_var} in the environment, or " if env_var else ""
    return (
        f"{env}install a keyring backend that works here, e.g. 'pip install keyrings.alt' and "
        "PYTHON_KEYRING_BACKEND=keyrings.alt.file.PlaintextKeyring (a plaintext file: choose it knowingly) "
        f"or keyrings.alt.file.EncryptedKeyring, then 'raftsmith keys set {name}'"
    )


def _with_timeout(fn: Callable[[], T], what: str, name: str, env_var: str | None, timeout: float | None = None) -> T:
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["value"] = fn()
        except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = err

    t = threading.Thread(target=work, name=f"keyring-{what}", daemon=True)
    t.start()
    t.join(KEYRING_TIMEOUT_S if timeout is None else timeout)
    if t.is_alive():
        raise KeyringUnavailable(
            f"The OS keyring did not answer within {KEYRING_TIMEOUT_S:.0f} s ({what} '{name}'); "
            f"it is probably locked or has no session here. To go on: {_fix_text(name, env_var)}."
        )
    if "error" in box:
        err = box["error"]
        if isinstance(err, KeyringUnavailable):
            raise err
        raise KeyringUnavailable(
            f"The OS keyring failed ({what} '{name}': {type(err).__name__}). To go on: {_fix_text(name, env_var)}."
        ) from None
    return box.get("value")  # type: ignore[return-value]


def _backend_usable() -> tuple[bool, str]:
    import keyring

    kr = keyring.get_keyring()
    kind = f"{type(kr).__module__}.{type(kr).__name__}"
    # the null backend drops writes silently and the fail backend raises: neither stores anything
    if kind.startswith(("keyring.backends.null", "keyring.backends.fail")):
        return False, kind
    return True, kind


def keyring_get(name: str, env_var: str | None = None) -> str | None:
    import keyring

    def get() -> str | None:
        usable, kind = _backend_usable()
        if not usable:
            raise KeyringUnavailable(f"No usable OS keyring here ({kind}). To go on: {_fix_text(name, env_var)}.")
        return keyring.get_password(SERVICE, name)

    return _with_timeout(get, "reading", name, env_var)


def get_key(name: str, explicit: str | None = None, env_var: str | None = None, *, required: bool = True) -> str | None:
    """The key for ``name``: ``explicit``, then the keyring, then ``env_var`` (default: the provider's).

    A keyring that fails or hangs is skipped when the env var holds the key; otherwise the
    KeyringUnavailable (naming the fix) is raised. With ``required`` a missing key is an error.
    """
    if explicit:
        return explicit
    if env_var is None:
        env_var = ENV_VARS.get(name)
    env_value = os.environ.get(env_var) if env_var else None
    try:
        value = keyring_get(name, env_var)
    except KeyringUnavailable:
        if env_value:
            log.debug("keyring unavailable; using $%s for '%s'", env_var, name)
            return env_value
        raise
    if value:
        return value
    if env_value:
        return env_value
    if required:
        env = f" or set {env_var}" if env_var else ""
        raise KeyringUnavailable(f"No API key for '{name}'. Store one with 'raftsmith keys set {name}'{env}.")
    return None


def set_key(name: str, value: str) -> str:
    """Store ``value`` in the keyring; returns the backend's name. Refuses backends that drop it."""
    import keyring

    if not value or not value.strip():
        raise KeyringUnavailable("Refusing to store an empty key.")

    def put() -> str:
        usable, kind = _backend_usable()
        if not usable:
            raise KeyringUnavailable(
                f"No usable OS keyring here ({kind}), so the key for '{name}' was not stored. "
                f"To go on: {_fix_text(name, ENV_VARS.get(name))}."
            )
        keyring.set_password(SERVICE, name, value.strip())
        return kind

    return _with_timeout(put, "storing", name, ENV_VARS.get(name))


def delete_key(name: str) -> bool:
    """Delete the stored key; False when there was none."""
    import keyring
    from keyring.errors import PasswordDeleteError

    def rm() -> bool:
        usable, kind = _backend_usable()
        if not usable:
            raise KeyringUnavailable(f"No usable OS keyring here ({kind}); nothing to delete.")
        try:
            keyring.delete_password(SERVICE, name)
        except PasswordDeleteError:
            return False
        return True

    return _with_timeout(rm, "deleting", name, ENV_VARS.get(name))


def list_keys(names: Iterable[str] = KNOWN_NAMES) -> list[dict[str, Any]]:
    """For each name: whether a key is in the keyring and whether its env var is set. Never values."""
    out = []
    for name in names:
        env_var = ENV_VARS.get(name)
        try:
            stored: bool | None = bool(keyring_get(name, env_var))
        except KeyringUnavailable:
            stored = None  # unknown: keyring not usable
        out.append({"name": name, "keyring": stored, "env_var": env_var, "env_set": bool(env_var and os.environ.get(env_var))})
    return out
