"""Audit log: chain, HMAC, head anchor, fail-closed, concurrency and a 1,200-case tamper suite."""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path

import pytest

from rag.audit import AuditLog, canonical, record_hash, tail, verify
from rag.errors import AuditError

N_RECORDS = 25
KEY = b"test-hmac-key-not-a-secret"


def _build(path: Path, n: int = N_RECORDS, key: bytes | None = None) -> None:
    log = AuditLog(path, hmac_key=key)
    for i in range(n):
        log.append("query", query=f"question {i} \u00e9\u4e2d", answer=f"answer {i}", latency_ms=1.5e-05 * i,
                   chunk_ids=[f"c{i}"], scores=[0.5 + i / 100], model={"name": "base", "digest": None})


def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\n")[:-1]


def _line_of(data: bytes, offset: int) -> int:
    """1-based line holding byte ``offset`` (a newline belongs to the line it ends)."""
    return data.count(b"\n", 0, offset) + 1


def _check(tmp: Path, good: bytes, head: bytes, tampered: bytes, expected_line: int, key: bytes | None) -> None:
    assert tampered != good
    tmp.write_bytes(tampered)
    tmp.with_name(tmp.name + ".head").write_bytes(head)
    res = verify(tmp, hmac_key=key)
    assert not res.ok, f"undetected tampering (expected line {expected_line})"
    assert res.bad_line == expected_line, (res.bad_line, expected_line, res.reason)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[bytes, bytes]]:
    out = {}
    for name, key in (("plain", None), ("hmac", KEY)):
        p = tmp_path_factory.mktemp(name) / "audit.jsonl"
        _build(p, key=key)
        out[name] = (p.read_bytes(), p.with_name(p.name + ".head").read_bytes())
    return out


def test_clean_log_verifies(tmp_path: Path) -> None:
    p = tmp_path / "a.jsonl"
    _build(p)
    res = verify(p)
    assert res.ok and res.records == N_RECORDS and res.head_checked
    recs = tail(p, 0)
    assert [r["seq"] for r in recs] == list(range(1, N_RECORDS + 1))
    assert recs[0]["prev"] == "0" * 64
    for a, b in zip(recs, recs[1:], strict=False):
        assert b["prev"] == a["hash"]
    for r in recs:
        assert r["hash"] == record_hash(r)
        assert r["ts"].endswith("+00:00")


def test_fields_and_hash_definition(tmp_path: Path) -> None:
    p = tmp_path / "a.jsonl"
    AuditLog(p, session="s1").append("query", query="q", answer="a", latency_ms=3.0)
    line = p.read_bytes().splitlines()[0]
    rec = json.loads(line)
    for k in ("seq", "ts", "user", "host", "session", "event", "outcome", "prev", "hash", "query", "answer"):
        assert k in rec
    import hashlib

    body = {k: v for k, v in rec.items() if k != "hash"}
    assert rec["hash"] == hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()).hexdigest()
    assert canonical(rec) == line


def test_log_text_false_stores_hashes(tmp_path: Path) -> None:
    p = tmp_path / "a.jsonl"
    AuditLog(p, log_text=False).append("query", query="secret question", answer="secret answer")
    text = p.read_text()
    assert "secret" not in text
    rec = json.loads(text)
    import hashlib

    assert rec["query"] == "sha256:" + hashlib.sha256(b"secret question").hexdigest()
    assert verify(p).ok


def test_hmac_detects_recomputed_hash(tmp_path: Path) -> None:
    p = tmp_path / "a.jsonl"
    _build(p, 5, key=KEY)
    assert verify(p, hmac_key=KEY).ok and verify(p, hmac_key=KEY).mac_checked
    lines = p.read_bytes().split(b"\n")
    rec = json.loads(lines[2])
    rec["answer"] = "forged"
    rec["hash"] = record_hash(rec)  # the forger can recompute the hash, not the mac
    lines[2] = canonical(rec)
    p.write_bytes(b"\n".join(lines))
    res = verify(p, hmac_key=KEY)
    assert not res.ok and res.bad_line == 3 and "mac" in (res.reason or "")
    assert verify(p, hmac_key=b"wrong").bad_line == 1


def test_fail_closed_when_unwritable(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    log = AuditLog(blocker / "audit.jsonl")
    with pytest.raises(AuditError, match="cannot be written.*refused"):
        log.check_writable()
    with pytest.raises(AuditError, match="refused"):
        log.append("query", query="q")


def test_append_refuses_after_tail_cut(tmp_path: Path) -> None:
    p = tmp_path / "a.jsonl"
    _build(p, 3)
    p.write_bytes(b"".join(line + b"\n" for line in _lines(p.read_bytes())[:2]))
    with pytest.raises(AuditError, match="head file"):
        AuditLog(p).append("query", query="q")


def test_concurrent_writers(tmp_path: Path) -> None:
    p = tmp_path / "a.jsonl"
    logs = [AuditLog(p) for _ in range(4)]

    def work(log: AuditLog) -> None:
        for i in range(15):
            log.append("query", query=f"{log.session}-{i}")

    threads = [threading.Thread(target=work, args=(lg,)) for lg in logs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    res = verify(p)
    assert res.ok and res.records == 60


def test_concurrent_processes(tmp_path: Path) -> None:
    import multiprocessing as mp

    p = tmp_path / "a.jsonl"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_proc_work, args=(str(p),)) for _ in range(3)]
    for pr in procs:
        pr.start()
    for pr in procs:
        pr.join(60)
        assert pr.exitcode == 0
    res = verify(p)
    assert res.ok and res.records == 30


def _proc_work(path: str) -> None:
    log = AuditLog(Path(path))
    for i in range(10):
        log.append("query", query=str(i))


def _tamper(rng: random.Random, kind: str, data: bytes, key: bytes | None) -> tuple[bytes, int]:
    lines = _lines(data)
    n = len(lines)
    join = lambda ls: b"".join(x + b"\n" for x in ls)  # noqa: E731
    if kind == "flip":
        off = rng.randrange(len(data))
        b = bytearray(data)
        b[off] ^= rng.randrange(1, 256)
        return bytes(b), _line_of(data, off)
    if kind == "delete":
        i = rng.randrange(n)
        return join(lines[:i] + lines[i + 1:]), i + 1
    if kind == "insert":
        i = rng.randrange(n + 1)
        m = rng.randrange(n)
        rec = json.loads(lines[m])
        rec["answer"] = f"inserted {rng.random()}"
        rec["hash"] = record_hash(rec)
        if key is not None:
            rec.pop("mac", None)
        # A copy of the record that belongs at this very position continues the chain
        # perfectly; without an HMAC key it is caught only at the next line.
        caught_late = key is None and m == i
        return join(lines[:i] + [canonical(rec)] + lines[i:]), i + 2 if caught_late else i + 1
    if kind == "forge":  # a well-formed record continuing the chain at position i (needs the HMAC key to catch)
        i = rng.randrange(n)
        prior = json.loads(lines[i - 1]) if i else None
        rec = json.loads(lines[i])
        rec["query"] = f"forged {rng.random()}"
        rec["prev"] = prior["hash"] if prior else "0" * 64
        rec["hash"] = record_hash(rec)
        return join(lines[:i] + [canonical(rec)] + lines[i + 1:]), i + 1
    if kind == "reorder":
        i, j = sorted(rng.sample(range(n), 2))
        ls = list(lines)
        ls[i], ls[j] = ls[j], ls[i]
        return join(ls), i + 1
    if kind == "duplicate":
        i = rng.randrange(n)
        j = rng.randrange(i, n + 1)  # the copy lands at or after the original
        dup = join(lines[:j] + [lines[i]] + lines[j:])
        return dup, j + 1 if j > i else i + 2
    if kind == "truncate":
        off = rng.randrange(len(data))
        return data[:off], _line_of(data, off)
    raise AssertionError(kind)


@pytest.mark.parametrize("variant", ["plain", "hmac"])
def test_tamper_suite(variant: str, built: dict[str, tuple[bytes, bytes]], tmp_path: Path) -> None:
    """>= 1,000 random tamperings per variant: every one detected, the first bad line named."""
    data, head = built[variant]
    key = KEY if variant == "hmac" else None
    kinds = ["flip", "delete", "insert", "reorder", "duplicate", "truncate"] + (["forge"] if key else [])
    rng = random.Random(1234 if key else 4321)
    counts = dict.fromkeys(kinds, 0)
    target = tmp_path / "t.jsonl"
    for _ in range(1050):
        kind = rng.choice(kinds)
        tampered, line = _tamper(rng, kind, data, key)
        if tampered == data:  # e.g. a duplicate that reproduces the log exactly cannot happen; guard anyway
            continue
        _check(target, data, head, tampered, line, key)
        counts[kind] += 1
    assert sum(counts.values()) >= 1000
    assert all(v >= 100 for v in counts.values()), counts


def test_forgery_without_key_is_caught_by_the_next_record(built: dict[str, tuple[bytes, bytes]], tmp_path: Path) -> None:
    """Without HMAC a forger can rewrite one record's hash; the chain then breaks at the next line."""
    data, head = built["plain"]
    lines = _lines(data)
    rec = json.loads(lines[4])
    rec["answer"] = "forged"
    rec["hash"] = record_hash(rec)
    lines[4] = canonical(rec)
    _check(tmp_path / "t.jsonl", data, head, b"".join(x + b"\n" for x in lines), 6, None)


def test_hmac_key_from_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    from rag.audit import load_hmac_key

    assert load_hmac_key(None) is None
    with pytest.raises(AuditError, match="raftsmith keys set audit-key"):
        load_hmac_key("audit-key")  # the test keyring (null backend) holds nothing
    monkeypatch.setenv("RAFTSMITH_AUDIT_HMAC_KEY", "k3y")
    assert load_hmac_key("audit-key") == b"k3y"
