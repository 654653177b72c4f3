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
from rag.errors import AuditError
from rag.fsutil import atomic_write

GENESIS = "0" * 64
REQUIRED = ("seq", "ts", "user", "host", "session", "event", "outcome", "prev", "hash")
_THREAD_LOCK = threading.Lock()
log = logging.getLogger(__name__)


def canonical(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def record_hash(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k not in ("hash", "mac")}
    return hashlib.sha256(canonical(body)).hexdigest()


def record_mac(record: dict[str, Any], key: bytes) -> str:
    body = {k: v for k, v in record.items() if k not in ("hash", "mac")}
    return hmac.new(key, canonical(body), hashlib.sha256).hexdigest()


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


def _read_tail(path: Path) -> tuple[bytes | None, bytes, int]:
    """(last complete line, bytes after the last newline, offset of those bytes), read from the end."""
    if not path.exists():
        return None, b"", 0
    size = path.stat().st_size
    if size == 0:
        return None, b"", 0
    with open(path, "rb") as f:
        pos, buf = size, b""
        while pos > 0:
            step = min(65536, pos)
            pos -= step
            f.seek(pos)
            buf = f.read(step) + buf
            last_nl = buf.rfind(b"\n")
            if last_nl >= 0 and (pos == 0 or buf.rfind(b"\n", 0, last_nl) >= 0):
                break
    last_nl = buf.rfind(b"\n")
    if last_nl < 0:
        return None, buf, 0
    start = buf.rfind(b"\n", 0, last_nl) + 1
    return buf[start:last_nl], buf[last_nl + 1:], pos + last_nl + 1


def _record_problem(rec: Any, raw: bytes, hmac_key: bytes | None) -> str | None:
    """Why one line is not a well-formed record with a matching hash (and mac); None when it is."""
    if not isinstance(rec, dict):
        return "not a JSON object"
    missing = [k for k in REQUIRED if k not in rec]
    if missing:
        return f"missing field(s) {', '.join(missing)}"
    try:
        if canonical(rec) != raw:
            return "bytes differ from the canonical form (edited)"
    except ValueError:
        return "contains values outside JSON (NaN/Infinity)"
    if not isinstance(rec["seq"], int) or isinstance(rec["seq"], bool):
        return f"seq is {rec['seq']!r}, not a record number"
    if rec["hash"] != record_hash(rec):
        return "hash does not match the record's content (edited)"
    if hmac_key is not None:
        if not isinstance(rec.get("mac"), str):
            return "no mac although an HMAC key is configured"
        if not hmac.compare_digest(rec["mac"], record_mac(rec, hmac_key)):
            return "mac does not match (edited without the key)"
    return None


def _head_point(log_path: Path, hmac_key: bytes | None) -> Point | None:
    """The head file's point; None when there is no head file; AuditError-worthy ValueError when unusable."""
    if not log_path.with_name(log_path.name + ".head").exists():
        return None
    seq, digest = read_head(log_path, hmac_key)
    return Point(seq, digest)


def _compare(kind: str, mark: Point, seq: int, digest: str, prev: str) -> tuple[int, str] | None:
    """(line, reason) when ``mark`` (head file, anchor or checkpoint) is not on a log ending at (seq, digest).

    ``prev`` is the last record's prev field, i.e. the hash of record seq-1: a mark one record
    behind is judged here too. Marks further behind are judged by the caller.
    """
    if mark.seq > seq:
        if seq == 0:
            return 1, (f"the log is empty or missing but the {kind} records seq {mark.seq}: the log was emptied, "
                       "deleted or replaced")
        return seq + 1, (f"the log ends at seq {seq} but the {kind} records seq {mark.seq}: records were cut off the "
                         "end, or the log was replaced by an older copy")
    if mark.seq == seq and mark.hash != digest:
        return seq, f"record {seq} differs from the one the {kind} records (replaced)"
    if mark.seq == seq - 1 and mark.hash != prev:
        return seq, f"record {seq} does not continue from the record the {kind} records (replaced)"
    return None


_FIX_NEW_LOG = ("To keep the evidence and go on, run 'raftsmith audit new-log': it moves the log and its head "
                "aside, unchanged, and starts a new log whose first record names them.")


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

    def _refuse(self, reason: str, fix: str = _FIX_NEW_LOG) -> AuditError:
        return AuditError(f"The audit log {self.path} does not verify ({reason}); answering is refused. "
                          f"Run 'raftsmith audit verify' to see it. {fix}")

    def _state(self) -> _State:
        """Check the end of the log against its head file and the keyring anchor; raise AuditError on a real problem."""
        last_raw, torn, torn_at = _read_tail(self.path)
        seq, digest, prev = 0, GENESIS, GENESIS
        if last_raw is not None:
            try:
                rec = json.loads(last_raw)
            except ValueError:
                rec = None
            problem = "not valid JSON" if rec is None else _record_problem(rec, last_raw, self.hmac_key)
            if problem is not None:
                raise self._refuse(f"its last record is corrupt: {problem}")
            seq, digest, prev = int(rec["seq"]), str(rec["hash"]), str(rec["prev"])
        try:
            head = _head_point(self.path, self.hmac_key)
        except ValueError as err:
            raise self._refuse(str(err)) from None
        state = _State(seq, digest, torn=torn, torn_at=torn_at)
        if head is None:
            if seq > 1:
                raise self._refuse(f"the head file {self.head_path.name} is missing")
            head = Point(0, GENESIS)
        problem_at = _compare("head file", head, seq, digest, prev)
        if problem_at is not None:
            raise self._refuse(problem_at[1])
        if head.seq < seq - 1:
            raise self._refuse(f"the head file ends at seq {head.seq}: records after it were appended outside raftsmith")
        state.head_lag = seq - head.seq
        if torn and state.head_lag:
            raise self._refuse("it ends with an incomplete record after a record its head file does not name")
        if self.anchor is not None:
            state.anchor = self.anchor.read()
            if state.anchor is not None:
                problem_at = _compare("keyring anchor", state.anchor, seq, digest, prev)
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
                last_raw, torn, _ = _read_tail(self.path)
                old: dict[str, Any] = {}
                if last_raw is not None:
                    with contextlib.suppress(ValueError, TypeError, KeyError):
                        rec = json.loads(last_raw)
                        old = {"previous_seq": int(rec["seq"]), "previous_hash": str(rec["hash"])}
                if self.path.exists():
                    os.replace(self.path, archive)
                if self.head_path.exists():
                    os.replace(self.head_path, archive.with_name(archive.name + ".head"))
                if self.torn_path.exists():
                    os.replace(self.torn_path, archive.with_name(archive.name + ".torn"))
                if self.anchor is not None:
                    self.anchor.reset()
                state = _State(0, GENESIS)
                record = self._write(state, "audit_new_log", {"previous_log": archive.name, **old,
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


@dataclass
class VerifyResult:
    ok: bool
    records: int
    path: str
    bad_line: int | None = None  # 1-based line of the FIRST bad record
    reason: str | None = None
    fix: str | None = None
    mac_checked: bool = False
    head_checked: bool = False
    anchor_checked: bool = False
    checkpoint_checked: bool = False
    mac_unchecked: bool = False  # records carry a mac but no key was given to check it
    head_lag: int = 0  # the last record is one past the head file (an interrupted append; repaired on the next append)
    torn_bytes: int = 0  # an incomplete last line after the head's record (an interrupted append, never committed)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __str__(self) -> str:
        if self.ok:
            checks = (("HMAC", self.mac_checked), ("head", self.head_checked), ("keyring anchor", self.anchor_checked),
                      ("checkpoint", self.checkpoint_checked))
            extras = [x for x, on in checks if on]
            text = f"{self.path}: {self.records} records, chain intact" + (f" ({', '.join(extras)} checked)" if extras else "")
            if self.mac_unchecked:
                text += " - records carry an HMAC but no key was given, so it was NOT checked"
            return "\n".join([text, *(f"  note: {n}" for n in self.notes)])
        text = f"{self.path}: line {self.bad_line} is the first bad record: {self.reason}"
        return text + (f"\n  fix: {self.fix}" if self.fix else "")


def verify(path: str | os.PathLike[str], hmac_key: bytes | None = None, check_head: bool = True,
           anchor: Point | None = None, checkpoint: Point | None = None) -> VerifyResult:
    """Check every record and the chain, then the head file, the keyring anchor and a kept checkpoint.

    Names the first bad line (1-based) and why. A log one record past its head, or ending in
    an incomplete line right after the head's record, is what a crash during an append leaves:
    it verifies, with a note (the next append repairs it).
    """
    p = Path(path)
    head_file = p.with_name(p.name + ".head")
    missing = not p.exists()
    if missing and not (head_file.exists() and check_head) and anchor is None and checkpoint is None:
        raise AuditError(f"No audit log at {p}; nothing has been logged yet, or audit.path points elsewhere. "
                         "(If the log and its head file were both deleted, only a keyring anchor or a kept "
                         "checkpoint can tell: see 'raftsmith audit checkpoint'.)")
    data = b"" if missing else p.read_bytes()
    lines = data.split(b"\n")
    torn = lines.pop()  # b"" when the file ends with a newline
    res = VerifyResult(ok=False, records=0, path=str(p), mac_checked=hmac_key is not None)
    prev, seq, before = GENESIS, 0, GENESIS
    wanted = {m.seq for m in (anchor, checkpoint) if m is not None}
    seen: dict[int, str] = {}

    def bad(i: int, why: str, fix: str | None = None) -> VerifyResult:
        res.bad_line, res.reason, res.records, res.fix = i, why, max(0, min(i - 1, len(lines))), fix
        if missing:
            res.reason = f"the log file is missing: {why}"
        return res

    for i, raw in enumerate(lines, start=1):
        try:
            rec = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return bad(i, "not valid JSON (damaged or truncated)")
        problem = _record_problem(rec, raw, None)
        if problem is not None and not problem.startswith("hash"):
            return bad(i, problem)
        if rec["seq"] != seq + 1:
            return bad(i, f"seq is {rec['seq']!r}, expected {seq + 1} (record deleted, inserted or reordered)")
        if rec["prev"] != prev:
            return bad(i, "prev does not match the previous record's hash (chain broken)")
        if problem is not None:
            return bad(i, problem)
        if hmac_key is not None:
            problem = _record_problem(rec, raw, hmac_key)
            if problem is not None:
                return bad(i, problem)
        if hmac_key is None and "mac" in rec:
            res.mac_unchecked = True
        before, prev, seq = prev, rec["hash"], rec["seq"]
        if seq in wanted:
            seen[seq] = prev
    n = len(lines)
    head_exact = True
    if check_head:
        try:
            head = _head_point(p, hmac_key)
        except ValueError as err:
            return bad(n + 1, str(err), _FIX_NEW_LOG)
        if head is None and seq > 1:
            return bad(n + 1, f"head file {head_file.name} is missing", _FIX_NEW_LOG)
        head = head or Point(0, GENESIS)
        problem_at = _compare("head file", head, seq, prev, before)
        if problem_at is None and head.seq < seq - 1:
            problem_at = head.seq + 1, (f"the head file ends at seq {head.seq}: records from here on were appended "
                                        "outside raftsmith")
        if problem_at is not None:
            if torn and problem_at[0] > n:
                return bad(n + 1, "record is not terminated by a newline (truncated)", _FIX_NEW_LOG)
            return bad(*problem_at, _FIX_NEW_LOG)
        res.head_lag = seq - head.seq
        head_exact = res.head_lag == 0
        res.head_checked = True
        if res.head_lag:
            res.notes.append(f"record {seq} was written but the head file still names seq {head.seq}: an append was "
                             "interrupted after its record was saved; the chain proves the record, and the next "
                             "append repairs the head")
    if torn:
        if not (check_head and head_exact):
            return bad(n + 1, "record is not terminated by a newline (truncated)", _FIX_NEW_LOG)
        res.torn_bytes = len(torn)
        res.notes.append(f"line {n + 1} is {len(torn)} bytes of an append that was cut short (crash, power loss or "
                         f"a full disk) after the last committed record; it never became a record, and the next "
                         f"append moves it to {p.name}.torn and records the repair")
    for kind, mark in (("keyring anchor", anchor), ("checkpoint you kept", checkpoint)):
        if mark is None:
            continue
        problem_at = _compare(kind, mark, seq, prev, before)
        if problem_at is None and mark.seq < seq - 1 and seen.get(mark.seq) != mark.hash:
            problem_at = mark.seq, f"record {mark.seq} differs from the one the {kind} records: the log was rewritten"
        if problem_at is not None:
            return bad(*problem_at, _FIX_NEW_LOG)
    res.anchor_checked, res.checkpoint_checked = anchor is not None, checkpoint is not None
    res.ok, res.records = True, n
    return res


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
    raw, _torn, _ = _read_tail(ws.audit_path)
    rec = json.loads(raw or b"{}")
    return Point(int(rec["seq"]), str(rec["hash"]))


def read_head(log_path: Path, hmac_key: bytes | None) -> tuple[int, str]:
    """(seq, hash) from ``<log>.head``; raises ValueError with the reason when unusable."""
    head = log_path.with_name(log_path.name + ".head")
    if not head.exists():
        raise ValueError(f"head file {head.name} is missing")
    try:
        h = json.loads(head.read_text(encoding="utf-8"))
        hseq, hhash = int(h["seq"]), str(h["hash"])
    except (ValueError, KeyError, TypeError, OSError):
        raise ValueError(f"head file {head.name} is unreadable") from None
    if hmac_key is not None:
        want = hmac.new(hmac_key, canonical({"seq": hseq, "hash": hhash}), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(str(h.get("mac", "")), want):
            raise ValueError(f"head file {head.name} has a bad mac")
    return hseq, hhash


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
