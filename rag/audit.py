"""Hash-chained, append-only audit log (JSON lines).

Each record carries ``prev`` (the previous record's hash) and ``hash`` = sha256 of the
record's canonical JSON (sorted keys, no spaces, UTF-8) without ``hash`` and ``mac``; with an
HMAC key from the keyring, ``mac`` = HMAC-SHA256 over the same bytes. Lines are written in
exactly that canonical form, so any changed byte shows: either the line stops parsing, stops
being canonical, or its hash no longer matches. A sidecar ``<log>.head`` (written atomically
after every append) holds the last seq and hash, so records cut off the end, an emptied or a
deleted log are noticed too; the keyring anchor and kept checkpoints (:mod:`rag.audit_anchor`)
catch an older copy of both files put back.

Appends take an exclusive file lock (concurrent ``raftsmith`` processes and threads), write
one line, flush and fsync, then the head. A crash between the two leaves the log one record
past its head: the chain proves that record, so the head is advisory there and the next
append repairs it; an incomplete last line right after the head's record (power loss, a full
disk) is moved aside to ``<log>.torn`` and the repair recorded. Anything else (a gap, a bad
link, a head or anchor past the log's end) refuses the append. When the log cannot be
written, :class:`AuditError` is raised and the caller refuses to answer (fail closed).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import hashlib
import hmac
import json
import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag.audit_anchor import KeyringAnchor, Point
from rag.audit_chain import (
    FIX_NEW_LOG,
    GENESIS,
    REQUIRED,
    VerifyResult,
    canonical,
    compare,
    head_point,
    read_head,
    read_tail,
    record_hash,
    record_mac,
    record_problem,
    verify,
)
from rag.errors import AuditError
from rag.fsutil import atomic_write

__all__ = ["GENESIS", "REQUIRED", "AuditLog", "VerifyResult", "audit_event", "canonical", "checkpoint",
           "load_hmac_key", "read_head", "record_hash", "record_mac", "tail", "text_digest", "verify",
           "verify_workspace", "workspace_anchor"]

_THREAD_LOCK = threading.Lock()
log = logging.getLogger(__name__)


def text_digest(text: str | None) -> str | None:
    return None if text is None else "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def now_rfc3339() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def load_hmac_key(name: str | None) -> bytes | None:
    """The HMAC key named in audit.hmac_key_name, from the OS keyring (None when unset)."""
    if not name:
        return None
    from rag.errors import KeyringUnavailable
    from rag.secrets import get_key

    try:
        secret = get_key(name, env_var="RAFTSMITH_AUDIT_HMAC_KEY", required=False)
    except KeyringUnavailable as err:
        raise AuditError(f"The audit HMAC key '{name}' cannot be read ({err}); answering is refused.") from None
    if not secret:
        raise AuditError(
            f"audit.hmac_key_name is '{name}' but no such key is in the keyring; store one with "
            f"'raftsmith keys set {name}' (or set RAFTSMITH_AUDIT_HMAC_KEY), or remove audit.hmac_key_name from raftsmith.yaml."
        )
    return secret.encode("utf-8")


@contextlib.contextmanager
def _file_lock(lock_path: Path) -> Iterator[None]:
    with _THREAD_LOCK:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_EX)
            except ImportError:  # pragma: no cover - Windows: the thread lock still serialises us
                pass
            yield
        finally:
            os.close(fd)  # closing releases the flock

@dataclass
class _State:
    """What an append finds at the end of the log, after every check passed."""

    seq: int
    digest: str
    head_lag: int = 0  # 1: the last record was written but its head was not (an interrupted append)
    torn: bytes = b""  # bytes after the last newline: an append cut short (never committed)
    torn_at: int = 0
    anchor: Point | None = None


@dataclass
class AuditLog:
    path: Path
    hmac_key: bytes | None = None
    log_text: bool = True
    session: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    user: str = field(default_factory=lambda: _safe_user())
    host: str = field(default_factory=socket.gethostname)
    anchor: KeyringAnchor | None = None

    @classmethod
    def for_workspace(cls, ws: Any, session: str | None = None) -> AuditLog:
        cfg = ws.config.audit
        log = cls(ws.audit_path, hmac_key=load_hmac_key(cfg.hmac_key_name), log_text=cfg.log_text,
                  anchor=workspace_anchor(ws))
        if session:
            log.session = session
        return log

    @property
    def head_path(self) -> Path:
        return self.path.with_name(self.path.name + ".head")

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    @property
    def torn_path(self) -> Path:
        return self.path.with_name(self.path.name + ".torn")

    def _refuse(self, reason: str, fix: str = FIX_NEW_LOG) -> AuditError:
        return AuditError(f"The audit log {self.path} does not verify ({reason}); answering is refused. "
                          f"Run 'raftsmith audit verify' to see it. {fix}")

    def _state(self) -> _State:
        """Check the end of the log against its head file and the keyring anchor; raise AuditError on a real problem."""
        last_raw, torn, torn_at = read_tail(self.path)
        seq, digest, prev = 0, GENESIS, GENESIS
        if last_raw is not None:
            try:
                rec = json.loads(last_raw)
            except ValueError:
                rec = None
            problem = "not valid JSON" if rec is None else record_problem(rec, last_raw, self.hmac_key)
            if problem is not None:
                raise self._refuse(f"its last record is corrupt: {problem}")
            seq, digest, prev = int(rec["seq"]), str(rec["hash"]), str(rec["prev"])
        try:
            head = head_point(self.path, self.hmac_key)
        except ValueError as err:
            raise self._refuse(str(err)) from None
        state = _State(seq, digest, torn=torn, torn_at=torn_at)
        if head is None:
            if seq > 1:
                raise self._refuse(f"the head file {self.head_path.name} is missing")
            head = Point(0, GENESIS)
        problem_at = compare("head file", head, seq, digest, prev)
        if problem_at is not None:
            raise self._refuse(("it ends with an incomplete record; " if torn else "") + problem_at[1])
        if head.seq < seq - 1:
            raise self._refuse(f"the head file ends at seq {head.seq}: records after it were appended outside raftsmith")
        state.head_lag = seq - head.seq
        if torn and state.head_lag:
            raise self._refuse("it ends with an incomplete record after a record its head file does not name")
        if self.anchor is not None:
            state.anchor = self.anchor.read()
            if state.anchor is not None:
                problem_at = compare("keyring anchor", state.anchor, seq, digest, prev)
                if problem_at is not None:
                    raise self._refuse(problem_at[1])
        return state

    def check_writable(self) -> None:
        """Raise AuditError now, before any work, if an append would fail (unwritable, damaged or cut log)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab"):
                pass
            with open(self.lock_path, "ab"):
                pass
            self._state()
        except OSError as err:
            raise AuditError(
                f"The audit log {self.path} cannot be written ({err.strerror or err}); answering is refused. "
                "Fix the permissions or disk space, or point audit.path in raftsmith.yaml elsewhere."
            ) from None

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        """Append one record (fsynced) and return it."""
        if not self.log_text:
            for k in ("query", "answer"):
                if fields.get(k) is not None:
                    fields[k] = text_digest(str(fields[k]))
            fields["text_logged"] = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with _file_lock(self.lock_path):
                state = self._state()
                self._repair(state)
                return self._write(state, event, fields)
        except OSError as err:
            raise AuditError(
                f"The audit log {self.path} cannot be written ({err.strerror or err}); answering is refused. "
                "Fix the permissions or disk space, or set audit.path in raftsmith.yaml."
            ) from None

    def _repair(self, state: _State) -> None:
        """Finish what an interrupted append left: a head one record behind, or a torn last line."""
        if state.head_lag:
            log.warning("audit: %s was one record ahead of its head file (an interrupted append); head repaired",
                        self.path)
            self._write_head(state.seq, state.digest)
        if state.torn:
            # The torn bytes never became a record (the head names the record before them), so
            # they are moved aside byte for byte and the repair itself goes into the chain.
            fd = os.open(self.torn_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, state.torn)
                os.fsync(fd)
            finally:
                os.close(fd)
            with open(self.path, "rb+") as f:
                f.truncate(state.torn_at)
                os.fsync(f.fileno())
            log.warning("audit: %s ended with %d bytes of an interrupted append; moved to %s",
                        self.path, len(state.torn), self.torn_path.name)
            self._write(state, "audit_repair", {
                "outcome": "repaired", "torn_bytes": len(state.torn),
                "torn_sha256": hashlib.sha256(state.torn).hexdigest(), "torn_file": self.torn_path.name})
            state.torn = b""

    def _write(self, state: _State, event: str, fields: dict[str, Any]) -> dict[str, Any]:
        seq, prev = state.seq + 1, state.digest
        record: dict[str, Any] = {
            "seq": seq, "ts": now_rfc3339(), "user": self.user, "host": self.host,
            "session": self.session, "event": event, "outcome": fields.pop("outcome", "ok"),
            **{k: v for k, v in fields.items() if v is not None}, "prev": prev,
        }
        record["hash"] = record_hash(record)
        if self.hmac_key:
            record["mac"] = record_mac(record, self.hmac_key)
        line = canonical(record) + b"\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._write_head(seq, record["hash"])
        if self.anchor is not None and self.anchor.due(seq, state.anchor):
            point = Point(seq, record["hash"])
            self.anchor.write(point, state.anchor)
            state.anchor = point
        state.seq, state.digest = seq, record["hash"]
        return record

    def _write_head(self, seq: int, digest: str) -> None:
        head: dict[str, Any] = {"seq": seq, "hash": digest}
        if self.hmac_key:
            head["mac"] = hmac.new(self.hmac_key, canonical({"seq": seq, "hash": digest}), hashlib.sha256).hexdigest()
        atomic_write(self.head_path, canonical(head) + b"\n")

    def start_new_log(self) -> tuple[Path, dict[str, Any]]:
        """Move the log and its head aside unchanged and start a new log naming them; (archive, first record).

        The deliberate way out after a failed verify: nothing is deleted, the keyring anchor is
        reset, and the new log's first record holds the old log's name, last seq and hash.
        """
        try:
            with _file_lock(self.lock_path):
                stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
                archive = self.path.with_name(f"{self.path.name}.{stamp}")
                last_raw, torn, _ = read_tail(self.path)
                old: dict[str, Any] = {}
                if last_raw is not None:
                    with contextlib.suppress(ValueError, TypeError, KeyError):
                        rec = json.loads(last_raw)
                        old = {"previous_seq": int(rec["seq"]), "previous_hash": str(rec["hash"])}
                existed = self.path.exists()
                if existed:
                    os.replace(self.path, archive)
                if self.head_path.exists():
                    os.replace(self.head_path, archive.with_name(archive.name + ".head"))
                if self.torn_path.exists():
                    os.replace(self.torn_path, archive.with_name(archive.name + ".torn"))
                if self.anchor is not None:
                    self.anchor.reset()
                state = _State(0, GENESIS)
                record = self._write(state, "audit_new_log", {"previous_log": archive.name if existed else None, **old,
                                                               "previous_torn_bytes": len(torn) or None})
                return archive, record
        except OSError as err:
            raise AuditError(f"Cannot start a new audit log at {self.path} ({err.strerror or err}); "
                             "fix the permissions or disk space.") from None


def _safe_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in some containers
        return str(os.getuid()) if hasattr(os, "getuid") else "unknown"


def workspace_anchor(ws: Any) -> KeyringAnchor | None:
    """The keyring anchor audit.anchor asks for (None when off)."""
    cfg = ws.config.audit
    if cfg.anchor == "off":
        return None
    return KeyringAnchor(ws.audit_path, mode=cfg.anchor, every=cfg.anchor_every)

def verify_workspace(ws: Any, checkpoint: Point | None = None) -> VerifyResult:
    """verify() for the workspace's log with its HMAC key and keyring anchor (as audit.* configures)."""
    key = load_hmac_key(ws.config.audit.hmac_key_name)
    keeper = workspace_anchor(ws)
    mark = keeper.read() if keeper is not None else None
    res = verify(ws.audit_path, hmac_key=key, anchor=mark, checkpoint=checkpoint)
    if keeper is not None and not keeper.available:
        res.notes.append(f"keyring anchor NOT checked: the keyring is unavailable ({keeper.unavailable_reason})")
    elif keeper is not None and mark is None and res.ok and res.records:
        res.notes.append("keyring anchor NOT checked: none is stored for this log yet (it is written on the next append)")
    return res


def checkpoint(ws: Any) -> Point:
    """The last (seq, hash) of the workspace's log, after it verified; AuditError otherwise."""
    res = verify_workspace(ws)
    if not res.ok:
        raise AuditError(f"The audit log does not verify, so no checkpoint is given: {res}")
    if res.records == 0:
        raise AuditError(f"The audit log {ws.audit_path} has no records yet; nothing to checkpoint.")
    raw, _torn, _ = read_tail(ws.audit_path)
    rec = json.loads(raw or b"{}")
    return Point(int(rec["seq"]), str(rec["hash"]))

def tail(path: str | os.PathLike[str], n: int = 20) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.exists():
        raise AuditError(f"No audit log at {p}; nothing has been logged yet, or audit.path points elsewhere.")
    out: list[dict[str, Any]] = []
    for raw in p.read_bytes().splitlines()[-n:] if n > 0 else p.read_bytes().splitlines():
        try:
            out.append(json.loads(raw))
        except ValueError:
            out.append({"unreadable": raw[:200].decode("utf-8", "replace")})
    return out


def audit_event(ws: Any, event: str, **fields: Any) -> dict[str, Any]:
    """Append one record to the workspace's audit log (used by ingest, register, bundle install...)."""
    return AuditLog.for_workspace(ws).append(event, **fields)
