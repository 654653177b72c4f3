"""Hash-chained, append-only audit log (JSON lines).

Each record carries ``prev`` (the previous record's hash) and ``hash`` = sha256 of the
record's canonical JSON (sorted keys, no spaces, UTF-8) without ``hash`` and ``mac``; with an
HMAC key from the keyring, ``mac`` = HMAC-SHA256 over the same bytes. Lines are written in
exactly that canonical form, so any changed byte shows: either the line stops parsing, stops
being canonical, or its hash no longer matches. A sidecar ``<log>.head`` (written atomically
after every append) holds the last seq and hash, so records cut off the end are noticed too.

Appends take an exclusive file lock (concurrent ``raftsmith`` processes and threads), write
one line, flush and fsync. When the log cannot be written, :class:`AuditError` is raised
and the caller refuses to answer (fail closed).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import hashlib
import hmac
import json
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag.errors import AuditError
from rag.fsutil import atomic_write

GENESIS = "0" * 64
REQUIRED = ("seq", "ts", "user", "host", "session", "event", "outcome", "prev", "hash")
_THREAD_LOCK = threading.Lock()


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


def _last_line(path: Path) -> bytes | None:
    """The last complete line of a file, read from the end (logs grow large)."""
    if not path.exists() or path.stat().st_size == 0:
        return None
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        end = f.tell()
        pos, buf = end, b""
        while pos > 0:
            step = min(65536, pos)
            pos -= step
            f.seek(pos)
            buf = f.read(step) + buf
            if buf.count(b"\n") >= 2 or pos == 0:
                break
    lines = buf.split(b"\n")
    if lines[-1] != b"":
        raise AuditError(f"{path} ends with an incomplete record (a truncated write); run 'raftsmith audit verify {path}'.")
    return lines[-2]


@dataclass
class AuditLog:
    path: Path
    hmac_key: bytes | None = None
    log_text: bool = True
    session: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    user: str = field(default_factory=lambda: _safe_user())
    host: str = field(default_factory=socket.gethostname)

    @classmethod
    def for_workspace(cls, ws: Any, session: str | None = None) -> AuditLog:
        cfg = ws.config.audit
        log = cls(ws.audit_path, hmac_key=load_hmac_key(cfg.hmac_key_name), log_text=cfg.log_text)
        if session:
            log.session = session
        return log

    @property
    def head_path(self) -> Path:
        return self.path.with_name(self.path.name + ".head")

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def check_writable(self) -> None:
        """Raise AuditError now, before any work, if an append would fail (unwritable, damaged tail)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab"):
                pass
            with open(self.lock_path, "ab"):
                pass
            last = _last_line(self.path)
        except OSError as err:
            raise AuditError(
                f"The audit log {self.path} cannot be written ({err.strerror or err}); answering is refused. "
                "Fix the permissions or disk space, or point audit.path in raftsmith.yaml elsewhere."
            ) from None
        if last is not None:
            try:
                prior = json.loads(last)
                seq, digest = int(prior["seq"]), str(prior["hash"])
            except (ValueError, KeyError, TypeError):
                raise AuditError(f"The last record of {self.path} is corrupt; run 'raftsmith audit verify'. "
                                 "Answering is refused until the log is repaired or moved aside.") from None
            problem = head_problem(self.path, seq, digest, self.hmac_key)
            if problem is not None:
                raise AuditError(f"The audit log {self.path} does not match its head file ({problem[1]}); answering is "
                                 "refused. Run 'raftsmith audit verify' and move the log aside to start a new one.")

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
                last = _last_line(self.path)
                if last is None:
                    seq, prev = 1, GENESIS
                else:
                    try:
                        prior = json.loads(last)
                        seq, prev = int(prior["seq"]) + 1, str(prior["hash"])
                    except (ValueError, KeyError, TypeError):
                        raise AuditError(f"The last record of {self.path} is corrupt; run 'raftsmith audit verify'. "
                                         "Answering is refused until the log is repaired or moved aside.") from None
                    problem = head_problem(self.path, seq - 1, prev, self.hmac_key)
                    if problem is not None:
                        raise AuditError(f"The audit log {self.path} does not match its head file ({problem[1]}); "
                                         "answering is refused. Run 'raftsmith audit verify' and move the log aside to start a new one.")
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
                return record
        except OSError as err:
            raise AuditError(
                f"The audit log {self.path} cannot be written ({err.strerror or err}); answering is refused. "
                "Fix the permissions or disk space, or set audit.path in raftsmith.yaml."
            ) from None

    def _write_head(self, seq: int, digest: str) -> None:
        head: dict[str, Any] = {"seq": seq, "hash": digest}
        if self.hmac_key:
            head["mac"] = hmac.new(self.hmac_key, canonical({"seq": seq, "hash": digest}), hashlib.sha256).hexdigest()
        atomic_write(self.head_path, canonical(head) + b"\n")


def _safe_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in some containers
        return str(os.getuid()) if hasattr(os, "getuid") else "unknown"


@dataclass
class VerifyResult:
    ok: bool
    records: int
    path: str
    bad_line: int | None = None  # 1-based line of the FIRST bad record
    reason: str | None = None
    mac_checked: bool = False
    head_checked: bool = False
    mac_unchecked: bool = False  # records carry a mac but no key was given to check it

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __str__(self) -> str:
        if self.ok:
            extras = [x for x, on in (("HMAC", self.mac_checked), ("head", self.head_checked)) if on]
            note = " - records carry an HMAC but no key was given, so it was NOT checked" if self.mac_unchecked else ""
            return f"{self.path}: {self.records} records, chain intact" + (f" ({', '.join(extras)} checked)" if extras else "") + note
        return f"{self.path}: line {self.bad_line} is the first bad record: {self.reason}"


def verify(path: str | os.PathLike[str], hmac_key: bytes | None = None, check_head: bool = True) -> VerifyResult:
    """Check every record and the chain; name the first bad line (1-based) and why."""
    p = Path(path)
    if not p.exists():
        raise AuditError(f"No audit log at {p}; nothing has been logged yet, or audit.path points elsewhere.")
    data = p.read_bytes()
    lines = data.split(b"\n")
    trailing_ok = lines[-1] == b""
    if trailing_ok:
        lines = lines[:-1]
    res = VerifyResult(ok=False, records=0, path=str(p), mac_checked=hmac_key is not None)
    prev, seq = GENESIS, 0

    def bad(i: int, why: str) -> VerifyResult:
        res.bad_line, res.reason, res.records = i, why, i - 1
        return res

    for i, raw in enumerate(lines, start=1):
        if i == len(lines) and not trailing_ok:
            return bad(i, "record is not terminated by a newline (truncated)")
        try:
            rec = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return bad(i, "not valid JSON (damaged or truncated)")
        if not isinstance(rec, dict):
            return bad(i, "not a JSON object")
        missing = [k for k in REQUIRED if k not in rec]
        if missing:
            return bad(i, f"missing field(s) {', '.join(missing)}")
        try:
            if canonical(rec) != raw:
                return bad(i, "bytes differ from the canonical form (edited)")
        except ValueError:
            return bad(i, "contains values outside JSON (NaN/Infinity)")
        if rec["seq"] != seq + 1 or isinstance(rec["seq"], bool):
            return bad(i, f"seq is {rec['seq']!r}, expected {seq + 1} (record deleted, inserted or reordered)")
        if rec["prev"] != prev:
            return bad(i, "prev does not match the previous record's hash (chain broken)")
        if rec["hash"] != record_hash(rec):
            return bad(i, "hash does not match the record's content (edited)")
        if hmac_key is not None:
            if not isinstance(rec.get("mac"), str):
                return bad(i, "no mac although an HMAC key is configured")
            if not hmac.compare_digest(rec["mac"], record_mac(rec, hmac_key)):
                return bad(i, "mac does not match (edited without the key)")
        if hmac_key is None and "mac" in rec:
            res.mac_unchecked = True
        prev, seq = rec["hash"], rec["seq"]
    if check_head and lines:
        problem = head_problem(p, seq, prev, hmac_key)
        if problem is not None:
            return bad(*problem)
        res.head_checked = True
    res.ok, res.records = True, len(lines)
    return res


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


def head_problem(log_path: Path, seq: int, last_hash: str, hmac_key: bytes | None) -> tuple[int, str] | None:
    """(line, reason) when the head file disagrees with a log whose last record is (seq, last_hash)."""
    try:
        hseq, hhash = read_head(log_path, hmac_key)
    except ValueError as err:
        return seq + 1, str(err)
    if hseq > seq:
        return seq + 1, f"log ends at seq {seq} but the head file records seq {hseq}: records were cut off the end"
    if hseq < seq:
        return hseq + 1, f"the head file ends at seq {hseq}: records from here on were appended outside raftsmith"
    if hhash != last_hash:
        return seq, "the last record differs from the one the head file records (replaced)"
    return None


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
