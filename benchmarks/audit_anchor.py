"""Audit append cost with the keyring anchor: off, every append, every 10 appends.

Each setting appends --records fsynced records to its own fresh log (HMAC on), in rounds
that alternate the settings so load drift hits all of them. Two keyring backends stand in
for the OS keyring, which cannot run here (no D-Bus session): an in-process dict (the cost
of raftsmith's own keyring path: the worker thread with a timeout, JSON) and a JSON file
replaced atomically with fsync on every write (closer to a keyring that persists to disk).
A real Secret Service or macOS Keychain round trip is NOT measured; expect it to add its
own IPC latency per read and write.

    python benchmarks/audit_anchor.py [--records 200] [--rounds 3]

It also times the anchor's read and write alone, which on a loaded machine is steadier
than the difference of two fsync-bound append times.

Writes benchmarks/results/audit_anchor.json. Quote the ratios, not the absolute times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "benchmarks" / "results" / "audit_anchor.json"


def _backends() -> dict[str, type]:
    from keyring.backend import KeyringBackend

    class DictKeyring(KeyringBackend):
        priority = 1  # type: ignore[assignment]

        def __init__(self) -> None:
            super().__init__()
            self.store: dict[str, str] = {}

        def get_password(self, service: str, username: str) -> str | None:
            return self.store.get(service + "/" + username)

        def set_password(self, service: str, username: str, password: str) -> None:
            self.store[service + "/" + username] = password

        def delete_password(self, service: str, username: str) -> None:
            self.store.pop(service + "/" + username, None)

    class FsyncFileKeyring(KeyringBackend):
        priority = 1  # type: ignore[assignment]

        def __init__(self) -> None:
            super().__init__()
            self.path = Path(tempfile.mkdtemp(prefix="kr-")) / "keyring.json"

        def _load(self) -> dict[str, str]:
            return json.loads(self.path.read_text()) if self.path.exists() else {}

        def get_password(self, service: str, username: str) -> str | None:
            return self._load().get(service + "/" + username)

        def set_password(self, service: str, username: str, password: str) -> None:
            from rag.fsutil import atomic_write

            data = self._load()
            data[service + "/" + username] = password
            atomic_write(self.path, json.dumps(data))

        def delete_password(self, service: str, username: str) -> None:
            data = self._load()
            data.pop(service + "/" + username, None)
            self.path.write_text(json.dumps(data))

    return {"memory": DictKeyring, "fsync_file": FsyncFileKeyring}


def _run(setting: str, backend: type, n: int, folder: Path) -> float:
    """Seconds per append for one setting on a fresh log."""
    import keyring

    from rag.audit import AuditLog, verify
    from rag.audit_anchor import KeyringAnchor

    keyring.set_keyring(backend())
    path = folder / f"{setting}-{time.monotonic_ns()}.jsonl"
    anchor = None if setting == "off" else KeyringAnchor(path, mode="keyring", every=int(setting.split("_")[1]))
    log = AuditLog(path, hmac_key=b"benchmark-key", anchor=anchor)
    t0 = time.perf_counter()
    for i in range(n):
        log.append("query", query=f"question {i}", answer="an answer of ordinary length " * 4, latency_ms=12.5)
    took = time.perf_counter() - t0
    assert verify(path, hmac_key=b"benchmark-key", anchor=anchor.read() if anchor else None).ok
    return took / n


def _anchor_ops(backend: type, n: int, folder: Path) -> dict[str, float]:
    """Microseconds per anchor read and per anchor write alone (no log, no fsync of ours)."""
    import keyring

    from rag.audit_anchor import KeyringAnchor, Point

    keyring.set_keyring(backend())
    anchor = KeyringAnchor(folder / "ops.jsonl", mode="keyring")
    t0 = time.perf_counter()
    for i in range(n):
        anchor.write(Point(i + 1, "ab" * 32), None)
    t1 = time.perf_counter()
    for _ in range(n):
        anchor.read()
    t2 = time.perf_counter()
    return {"anchor_write_us": round((t1 - t0) / n * 1e6, 1), "anchor_read_us": round((t2 - t1) / n * 1e6, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()

    settings = ["off", "every_1", "every_10"]
    results: dict[str, dict[str, float]] = {}
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        for name, backend in _backends().items():
            per: dict[str, list[float]] = {s: [] for s in settings}
            for _ in range(args.rounds):
                for s in settings:
                    per[s].append(_run(s, backend, args.records, Path(tmp)))
            med = {s: statistics.median(v) for s, v in per.items()}
            results[name] = {
                **_anchor_ops(backend, args.records, Path(tmp)),
                **{f"{s}_ms_per_append": round(med[s] * 1000, 3) for s in settings},
                "every_1_over_off": round(med["every_1"] / med["off"], 3),
                "every_10_over_off": round(med["every_10"] / med["off"], 3),
            }
            print(f"{name:>10}: " + ", ".join(f"{k}={v}" for k, v in results[name].items()))
    out = {
        "benchmark": "audit_anchor",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "loadavg_start": load_start, "loadavg_end": os.getloadavg()},
        "records_per_run": args.records, "rounds": args.rounds, "hmac": True,
        "note": "stand-in keyring backends; a real OS keyring's IPC round trip is not measured here",
        "backends": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
