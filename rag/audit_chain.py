"""The audit log's format and its checker: canonical records, the hash chain, verify.

A record's ``hash`` is sha256 of its canonical JSON (sorted keys, no spaces, UTF-8) without
``hash`` and ``mac``; ``prev`` is the previous record's hash (64 zeros before the first);
``mac`` is HMAC-SHA256 of the same bytes. :func:`verify` walks every line, then holds the
end of the chain against the head file, the keyring anchor and a kept checkpoint
(:mod:`rag.audit_anchor`). The writer is :mod:`rag.audit`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag.audit_anchor import Point
from rag.errors import AuditError

__all__ = ["FIX_NEW_LOG", "GENESIS", "REQUIRED", "VerifyResult", "canonical", "compare", "head_point", "read_head",
           "read_tail", "record_hash", "record_mac", "record_problem", "verify"]

GENESIS = "0" * 64
REQUIRED = ("seq", "ts", "user", "host", "session", "event", "outcome", "prev", "hash")


def canonical(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def record_hash(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k not in ("hash", "mac")}
    return hashlib.sha256(canonical(body)).hexdigest()


def record_mac(record: dict[str, Any], key: bytes) -> str:
    body = {k: v for k, v in record.items() if k not in ("hash", "mac")}
    return hmac.new(key, canonical(body), hashlib.sha256).hexdigest()


def read_tail(path: Path) -> tuple[bytes | None, bytes, int]:
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


def record_problem(rec: Any, raw: bytes, hmac_key: bytes | None) -> str | None:
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


def head_point(log_path: Path, hmac_key: bytes | None) -> Point | None:
    """The head file's point; None when there is no head file; AuditError-worthy ValueError when unusable."""
    if not log_path.with_name(log_path.name + ".head").exists():
        return None
    seq, digest = read_head(log_path, hmac_key)
    return Point(seq, digest)


def compare(kind: str, mark: Point, seq: int, digest: str, prev: str) -> tuple[int, str] | None:
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


FIX_NEW_LOG = ("To keep the evidence and go on, run 'raftsmith audit new-log': it moves the log and its head "
                "aside, unchanged, and starts a new log whose first record names them.")


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
        problem = record_problem(rec, raw, None)
        if problem is not None and not problem.startswith("hash"):
            return bad(i, problem)
        if rec["seq"] != seq + 1:
            return bad(i, f"seq is {rec['seq']!r}, expected {seq + 1} (record deleted, inserted or reordered)")
        if rec["prev"] != prev:
            return bad(i, "prev does not match the previous record's hash (chain broken)")
        if problem is not None:
            return bad(i, problem)
        if hmac_key is not None:
            problem = record_problem(rec, raw, hmac_key)
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
            head = head_point(p, hmac_key)
        except ValueError as err:
            return bad(n + 1, str(err), FIX_NEW_LOG)
        if head is None and seq > 1:
            return bad(n + 1, f"head file {head_file.name} is missing", FIX_NEW_LOG)
        head = head or Point(0, GENESIS)
        problem_at = compare("head file", head, seq, prev, before)
        if problem_at is None and head.seq < seq - 1:
            problem_at = head.seq + 1, (f"the head file ends at seq {head.seq}: records from here on were appended "
                                        "outside raftsmith")
        if problem_at is not None:
            if torn and problem_at[0] > n:
                return bad(n + 1, "record is not terminated by a newline (truncated)", FIX_NEW_LOG)
            return bad(*problem_at, FIX_NEW_LOG)
        res.head_lag = seq - head.seq
        head_exact = res.head_lag == 0
        res.head_checked = True
        if res.head_lag:
            res.notes.append(f"record {seq} was written but the head file still names seq {head.seq}: an append was "
                             "interrupted after its record was saved; the chain proves the record, and the next "
                             "append repairs the head")
    if torn:
        if not (check_head and head_exact):
            return bad(n + 1, "record is not terminated by a newline (truncated)", FIX_NEW_LOG)
        res.torn_bytes = len(torn)
        res.notes.append(f"line {n + 1} is {len(torn)} bytes of an append that was cut short (crash, power loss or "
                         f"a full disk) after the last committed record; it never became a record, and the next "
                         f"append moves it to {p.name}.torn and records the repair")
    for kind, mark in (("keyring anchor", anchor), ("checkpoint you kept", checkpoint)):
        if mark is None:
            continue
        problem_at = compare(kind, mark, seq, prev, before)
        if problem_at is None and mark.seq < seq - 1 and seen.get(mark.seq) != mark.hash:
            problem_at = mark.seq, f"record {mark.seq} differs from the one the {kind} records: the log was rewritten"
        if problem_at is not None:
            return bad(*problem_at, FIX_NEW_LOG)
    res.anchor_checked, res.checkpoint_checked = anchor is not None, checkpoint is not None
    res.ok, res.records = True, n
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
