"""Anchors for the audit chain kept outside the log and its head file.

The log and ``<log>.head`` live side by side, so someone who can write the folder can put
back an older copy of both, and they agree. Two anchors catch that:

* the **keyring anchor**: the last (seq, hash) written to the OS keyring next to the HMAC
  key, only ever moved forward; a log that ends before it, or whose record at that seq
  differs, fails verify and refuses appends;
* a **checkpoint**: ``SEQ:HASH`` printed by ``raftsmith audit checkpoint`` for the user to
  keep elsewhere; ``audit verify --checkpoint SEQ:HASH`` checks the log still extends it.

A chain hash commits to every record before it (each record holds the previous hash), so
one (seq, hash) pair pins the whole prefix.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rag.errors import AuditError, KeyringUnavailable

__all__ = ["ANCHOR_PREFIX", "KeyringAnchor", "Point", "anchor_name", "parse_checkpoint"]

log = logging.getLogger(__name__)

ANCHOR_PREFIX = "audit-anchor-"
_CHECKPOINT = re.compile(r"\s*(\d{1,18}):([0-9a-fA-F]{64})\s*")


@dataclass(frozen=True)
class Point:
    """One position of the chain: a record's seq and its hash (seq 0 = before the first record)."""

    seq: int
    hash: str

    def __str__(self) -> str:
        return f"{self.seq}:{self.hash}"


def parse_checkpoint(text: str) -> Point:
    """``SEQ:HASH`` (the 64 hex digits 'raftsmith audit checkpoint' printed) as a Point."""
    m = _CHECKPOINT.fullmatch(text)
    if m is None or int(m.group(1)) < 1:
        raise AuditError(f"'{text}' is not a checkpoint; pass SEQ:HASH exactly as 'raftsmith audit checkpoint' "
                         "printed it (a record number >= 1, a colon, 64 hex digits).")
    return Point(int(m.group(1)), m.group(2).lower())


def anchor_name(log_path: Path) -> str:
    """The keyring entry name for one log: derived from its absolute path, so workspaces do not collide."""
    digest = hashlib.sha256(str(Path(log_path).resolve()).encode("utf-8")).hexdigest()[:16]
    return ANCHOR_PREFIX + digest


# Keyring backends that failed in this process (auto mode): a hanging keyring costs its
# timeout once, not on every append. Keyed by the backend object in use (weakly: a new
# backend object, e.g. after keyring.set_keyring, is tried afresh).
_DOWN: weakref.WeakKeyDictionary[object, str] = weakref.WeakKeyDictionary()


def _backend() -> object:
    import keyring

    return keyring.get_keyring()


class KeyringAnchor:
    """The last (seq, hash) of one log, in the OS keyring; it only moves forward.

    ``mode="auto"`` uses the keyring when one answers here and otherwise goes on without it
    (warning once per process): verify then says the anchor was not checked. ``"keyring"``
    makes a keyring failure an :class:`AuditError`, so answering is refused (fail closed).
    """

    def __init__(self, log_path: Path, mode: Literal["auto", "keyring"] = "auto", every: int = 1):
        self.log_path = Path(log_path)
        self.name = anchor_name(self.log_path)
        self.mode = mode
        self.every = max(1, every)
        self.unavailable_reason: str | None = _DOWN.get(_backend()) if mode == "auto" else None
        self.available = self.unavailable_reason is None  # False in auto mode once the keyring failed here

    def _unavailable(self, err: KeyringUnavailable, what: str) -> None:
        if self.mode == "keyring":
            raise AuditError(f"The audit anchor in the keyring cannot be {what} ({err}); answering is refused. "
                             "Make the keyring usable, or set audit.anchor: auto (or off) in raftsmith.yaml.") from None
        if self.available:
            log.warning("audit anchor: keyring unavailable, going on with the head file only (%s)", err)
        self.available = False
        self.unavailable_reason = _DOWN[_backend()] = str(err)

    def read(self) -> Point | None:
        """The stored point; None when none is stored yet or the keyring is unavailable (auto mode)."""
        if not self.available:
            return None
        from rag.secrets import keyring_get

        try:
            raw = keyring_get(self.name)
        except KeyringUnavailable as err:
            self._unavailable(err, "read")
            return None
        if not raw:
            return None
        try:
            data = json.loads(raw)
            point = Point(int(data["seq"]), str(data["hash"]))
        except (ValueError, KeyError, TypeError):
            raise AuditError(f"The audit anchor '{self.name}' in the keyring is unreadable; answering is refused. "
                             "If you started a new log on purpose, run 'raftsmith audit new-log'.") from None
        return point

    def due(self, seq: int, stored: Point | None) -> bool:
        return self.available and (stored is None or seq - stored.seq >= self.every)

    def write(self, point: Point, stored: Point | None) -> None:
        """Store ``point`` unless the stored one is already at or past it (monotonic)."""
        if not self.available or (stored is not None and stored.seq >= point.seq):
            return
        from rag.secrets import set_key

        try:
            set_key(self.name, json.dumps({"seq": point.seq, "hash": point.hash}, sort_keys=True))
        except KeyringUnavailable as err:
            self._unavailable(err, "written")

    def reset(self) -> bool:
        """Forget the stored point (only for 'raftsmith audit new-log'); False when none was stored."""
        from rag.secrets import delete_key

        try:
            return delete_key(self.name)
        except KeyringUnavailable as err:
            self._unavailable(err, "reset")
            return False
