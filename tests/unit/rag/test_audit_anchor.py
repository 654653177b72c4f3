"""Anchoring the audit chain outside its two files: the keyring anchor, kept checkpoints, new-log."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import keyring
import pytest
from click.testing import CliRunner
from keyring_double import MemoryKeyring

from rag.audit import AuditLog, canonical, record_hash, tail, verify, verify_workspace
from rag.audit_anchor import KeyringAnchor, Point, anchor_name, parse_checkpoint
from rag.cli.main import cli
from rag.config import init_workspace, load_workspace
from rag.errors import AuditError


@pytest.fixture
def mem() -> Iterator[MemoryKeyring]:
    old = keyring.get_keyring()
    kr = MemoryKeyring()
    keyring.set_keyring(kr)
    yield kr
    keyring.set_keyring(old)


def _head(p: Path) -> Path:
    return p.with_name(p.name + ".head")


def _snapshot(p: Path) -> tuple[bytes, bytes]:
    return p.read_bytes(), _head(p).read_bytes()


def _put_back(p: Path, snap: tuple[bytes, bytes]) -> None:
    p.write_bytes(snap[0])
    _head(p).write_bytes(snap[1])


def test_parse_checkpoint() -> None:
    h = "ab" * 32
    assert parse_checkpoint(f" 12:{h.upper()} ") == Point(12, h)
    for bad in ("12", f"0:{h}", f"x:{h}", f"12:{h[:-1]}", f"12:{h}0", ""):
        with pytest.raises(AuditError, match="SEQ:HASH"):
            parse_checkpoint(bad)


def test_anchor_names_differ_per_log(tmp_path: Path) -> None:
    a, b = anchor_name(tmp_path / "a" / "audit.jsonl"), anchor_name(tmp_path / "b" / "audit.jsonl")
    assert a != b and a.startswith("audit-anchor-")


def test_keyring_anchor_catches_an_older_copy_put_back(tmp_path: Path, mem: MemoryKeyring) -> None:
    p = tmp_path / "audit.jsonl"
    anchor = KeyringAnchor(p)
    log = AuditLog(p, anchor=anchor)
    for i in range(6):
        log.append("query", query=str(i))
    older = _snapshot(p)
    for i in range(6, 10):
        log.append("query", query=str(i))
    stored = json.loads(mem.store[("raftsmith", anchor.name)])
    assert stored["seq"] == 10 and stored["hash"] == tail(p, 1)[0]["hash"]
    _put_back(p, older)  # the log and its head agree: the head alone cannot tell
    assert verify(p).ok
    res = verify(p, anchor=anchor.read())
    assert not res.ok and res.bad_line == 7 and "keyring anchor records seq 10" in (res.reason or "")
    with pytest.raises(AuditError, match="keyring anchor records seq 10"):
        AuditLog(p, anchor=anchor).append("query", query="q")
    assert _snapshot(p) == older  # refused: nothing written, nothing overwritten
    assert json.loads(mem.store[("raftsmith", anchor.name)])["seq"] == 10


def test_keyring_anchor_catches_both_files_deleted(tmp_path: Path, mem: MemoryKeyring) -> None:
    p = tmp_path / "audit.jsonl"
    log = AuditLog(p, anchor=KeyringAnchor(p))
    for i in range(3):
        log.append("query", query=str(i))
    p.unlink()
    _head(p).unlink()
    res = verify(p, anchor=KeyringAnchor(p).read())
    assert not res.ok and "missing" in (res.reason or "") and "seq 3" in (res.reason or "")
    with pytest.raises(AuditError, match="seq 3"):
        AuditLog(p, anchor=KeyringAnchor(p)).append("query", query="q")
    assert not p.exists()


def test_keyring_anchor_catches_a_rewritten_record(tmp_path: Path, mem: MemoryKeyring) -> None:
    """Without HMAC, a rewrite that recomputes every later hash (and the head) passes the chain; not the anchor."""
    p = tmp_path / "audit.jsonl"
    log = AuditLog(p, anchor=KeyringAnchor(p))
    for i in range(5):
        log.append("query", query=str(i))
    recs = tail(p, 0)
    prev = recs[1]["hash"]
    for r in recs[2:]:
        r["prev"] = prev
        if r["seq"] == 3:
            r["query"] = "rewritten"
        r["hash"] = prev = record_hash(r)
    p.write_bytes(b"".join(canonical(r) + b"\n" for r in recs))
    _head(p).write_bytes(canonical({"hash": prev, "seq": 5}) + b"\n")
    assert verify(p).ok  # the chain and head are self-consistent again
    res = verify(p, anchor=KeyringAnchor(p).read())
    assert not res.ok and res.bad_line == 5 and "keyring anchor" in (res.reason or "")


def test_anchor_is_monotonic_and_every_n(tmp_path: Path, mem: MemoryKeyring) -> None:
    p = tmp_path / "audit.jsonl"
    anchor = KeyringAnchor(p, every=5)
    log = AuditLog(p, anchor=anchor)
    for i in range(7):
        log.append("query", query=str(i))
    # written at the first append, then once 5 more records are past it
    assert anchor.read() == Point(6, tail(p, 0)[5]["hash"])
    res = verify(p, anchor=anchor.read())
    assert res.ok and res.anchor_checked  # an anchor behind the end is checked against its record
    for i in range(4):
        log.append("query", query=str(i))
    assert anchor.read() == Point(11, tail(p, 1)[0]["hash"])
    anchor.write(Point(4, "0" * 64), anchor.read())
    assert anchor.read() == Point(11, tail(p, 1)[0]["hash"])  # never moves back


def test_auto_mode_without_a_keyring_goes_on_and_says_so(tmp_path: Path) -> None:
    ws = init_workspace(tmp_path / "ws")  # the suite's null keyring: nothing can be stored
    assert ws.config.audit.anchor == "auto"
    log = AuditLog.for_workspace(ws)
    log.append("query", query="q")
    assert log.anchor is not None and not log.anchor.available
    res = verify_workspace(ws)
    assert res.ok and not res.anchor_checked
    assert any("keyring anchor NOT checked" in n for n in res.notes)


def test_keyring_mode_without_a_keyring_refuses(tmp_path: Path) -> None:
    p = tmp_path / "audit.jsonl"
    with pytest.raises(AuditError, match="anchor in the keyring cannot be read.*refused"):
        AuditLog(p, anchor=KeyringAnchor(p, mode="keyring")).append("query", query="q")
    assert not p.exists() or p.read_bytes() == b""


def test_unreadable_anchor_refuses(tmp_path: Path, mem: MemoryKeyring) -> None:
    p = tmp_path / "audit.jsonl"
    mem.store[("raftsmith", anchor_name(p))] = "not json"
    with pytest.raises(AuditError, match="unreadable"):
        AuditLog(p, anchor=KeyringAnchor(p)).append("query", query="q")


def _cli_ws(tmp_path: Path) -> tuple[CliRunner, str, Path]:
    ws = init_workspace(tmp_path / "ws")
    cfg = str(ws.config_path)
    return CliRunner(), cfg, ws.audit_path


def _append(cfg: str, n: int) -> None:
    ws = load_workspace(cfg)
    for i in range(n):
        AuditLog.for_workspace(ws).append("query", query=f"q{i}")


def test_cli_checkpoint_then_verify_against_it(tmp_path: Path) -> None:
    runner, cfg, p = _cli_ws(tmp_path)
    _append(cfg, 4)
    out = runner.invoke(cli, ["audit", "checkpoint", "--config", cfg])
    assert out.exit_code == 0, out.output
    point = out.stdout.strip().splitlines()[0]
    assert point == f"4:{tail(p, 1)[0]['hash']}"
    older = _snapshot(p)
    _append(cfg, 3)
    ok = runner.invoke(cli, ["audit", "verify", "--config", cfg, "--checkpoint", point])
    assert ok.exit_code == 0 and "checkpoint" in ok.output
    # later: the log and head of seq 2 are put back (both agree) -> the kept checkpoint catches it
    runner.invoke(cli, ["audit", "checkpoint", "--config", cfg])
    _put_back(p, older)
    p.write_bytes(b"".join(p.read_bytes().splitlines(keepends=True)[:2]))
    rec2 = json.loads(p.read_bytes().splitlines()[-1])
    _head(p).write_bytes(canonical({"hash": rec2["hash"], "seq": 2}) + b"\n")
    assert runner.invoke(cli, ["audit", "verify", "--config", cfg]).exit_code == 0  # undetectable without it
    bad = runner.invoke(cli, ["audit", "verify", "--config", cfg, "--checkpoint", point])
    assert bad.exit_code == 1
    assert "checkpoint you kept records seq 4" in bad.output and "audit new-log" in bad.output
    js = runner.invoke(cli, ["audit", "verify", "--config", cfg, "--checkpoint", point, "--json"])
    assert js.exit_code == 1 and json.loads(js.stdout)["bad_line"] == 3


def test_cli_rejects_a_malformed_checkpoint(tmp_path: Path) -> None:
    runner, cfg, _ = _cli_ws(tmp_path)
    _append(cfg, 1)
    out = runner.invoke(cli, ["audit", "verify", "--config", cfg, "--checkpoint", "4:abc"])
    assert out.exit_code == 1 and "SEQ:HASH" in out.output


def test_cli_checkpoint_refuses_a_bad_log(tmp_path: Path) -> None:
    runner, cfg, p = _cli_ws(tmp_path)
    _append(cfg, 2)
    p.write_bytes(b"")
    out = runner.invoke(cli, ["audit", "checkpoint", "--config", cfg])
    assert out.exit_code == 1 and "no checkpoint is given" in out.output


def test_cli_verify_names_an_emptied_or_deleted_log(tmp_path: Path) -> None:
    runner, cfg, p = _cli_ws(tmp_path)
    _append(cfg, 15)
    p.write_bytes(b"")
    out = runner.invoke(cli, ["audit", "verify", "--config", cfg])
    assert out.exit_code == 1
    assert "emptied" in out.output and "seq 15" in out.output and "raftsmith audit new-log" in out.output
    p.unlink()
    out = runner.invoke(cli, ["audit", "verify", "--config", cfg])
    assert out.exit_code == 1 and "missing" in out.output


def test_cli_new_log_keeps_the_old_one_and_chains_to_it(tmp_path: Path, mem: MemoryKeyring) -> None:
    runner, cfg, p = _cli_ws(tmp_path)
    _append(cfg, 5)
    last = tail(p, 1)[0]
    p.write_bytes(b"")  # tampered: every append is refused now
    with pytest.raises(AuditError):
        _append(cfg, 1)
    out = runner.invoke(cli, ["audit", "new-log", "--yes", "--config", cfg])
    assert out.exit_code == 0, out.output
    archives = sorted(x for x in p.parent.iterdir() if re.fullmatch(r"audit\.jsonl\.\d{8}T\d+Z", x.name))
    assert len(archives) == 1 and archives[0].read_bytes() == b""
    assert json.loads(archives[0].with_name(archives[0].name + ".head").read_text())["seq"] == 5
    first = tail(p, 0)
    assert len(first) == 1 and first[0]["event"] == "audit_new_log" and first[0]["previous_log"] == archives[0].name
    assert "previous_seq" not in first[0]  # the old log was empty: nothing to name
    _append(cfg, 2)
    res = verify_workspace(load_workspace(cfg))
    assert res.ok and res.records == 3 and res.anchor_checked
    assert not verify(archives[0]).ok  # the evidence is kept as it was found
    assert last["seq"] == 5


def test_new_log_names_the_last_record_of_a_readable_log(tmp_path: Path) -> None:
    p = tmp_path / "audit.jsonl"
    log = AuditLog(p)
    for i in range(3):
        log.append("query", query=str(i))
    last = tail(p, 1)[0]
    archive, rec = log.start_new_log()
    assert rec["previous_seq"] == 3 and rec["previous_hash"] == last["hash"] and rec["seq"] == 1
    assert verify(archive).ok and verify(p).ok


class _HangingKeyring(MemoryKeyring):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def get_password(self, service: str, username: str) -> str | None:
        self.calls += 1
        import time

        time.sleep(5)
        return None


def test_a_hanging_keyring_costs_its_timeout_once_in_auto_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rag import secrets

    monkeypatch.setattr(secrets, "KEYRING_TIMEOUT_S", 0.2)
    old = keyring.get_keyring()
    hanging = _HangingKeyring()
    keyring.set_keyring(hanging)
    try:
        p = tmp_path / "audit.jsonl"
        for i in range(4):  # a new AuditLog per record, as audit_event does
            AuditLog(p, anchor=KeyringAnchor(p)).append("query", query=str(i))
        assert hanging.calls == 1
        assert verify(p).ok and verify(p).records == 4
    finally:
        keyring.set_keyring(old)


def test_a_workspace_recreated_at_the_same_path_needs_new_log(tmp_path: Path, mem: MemoryKeyring) -> None:
    runner, cfg, p = _cli_ws(tmp_path)
    _append(cfg, 3)
    import shutil

    shutil.rmtree(tmp_path / "ws")
    runner, cfg, p = _cli_ws(tmp_path)  # same path, fresh folder: only the keyring remembers
    with pytest.raises(AuditError, match="keyring anchor records seq 3.*new-log"):
        _append(cfg, 1)
    out = runner.invoke(cli, ["audit", "new-log", "--yes", "--config", cfg])
    assert out.exit_code == 0, out.output
    first = tail(p, 0)[0]
    assert first["event"] == "audit_new_log" and "previous_log" not in first
    _append(cfg, 1)
    assert verify_workspace(load_workspace(cfg)).ok
