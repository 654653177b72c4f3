"""Hostile bundle headers: time and peak RSS to refuse each one, guarded vs. plain tarfile.

Each hostile bundle is built here (streamed to disk, nothing big held in memory):

* ``pax_400mb``: a .tar.gz whose first header is a PAX extended header declaring 400 MB,
  followed by 400 MB of '1' (the gzip is under 1 MB);
* ``gnu_longname_400mb``: the same with a GNU long-name ('L') header;
* ``cve_2024_6232_60k``: a well-formed PAX header under the 64 KiB cap whose value is
  60,000 digits (tarfile's 'hdrcharset' search backtracks quadratically before 3.11.10);
* ``cve_2024_6232_1m``: the same with 1,000,000 digits (a ~1 KB gzip).

Every measurement runs in a fresh child process: ``guarded`` is ``raftsmith``'s
``verify_bundle`` (rag.bundle.headers checks the raw headers first), ``tarfile`` is
``tarfile.open(path, 'r|*')`` iterating the members, as the bundle reader did before.
Peak RSS is the child's ru_maxrss; ``baseline`` is a child that only imports the same modules.

    python benchmarks/bundle_hostile.py [--timeout 120]

Writes benchmarks/results/bundle_hostile.json.
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "benchmarks" / "results" / "bundle_hostile.json"
BLOCK = 512

_CHILD = r"""
import json, resource, sys, tarfile, time
sys.path.insert(0, {root!r})
from rag.bundle import verify_bundle
from rag.errors import IntegrityError
mode, path = sys.argv[1], sys.argv[2]
t = time.perf_counter()
outcome = "accepted"
try:
    if mode == "guarded":
        verify_bundle(path)
    elif mode == "tarfile":
        with tarfile.open(path, "r|*") as tf:
            for _ in tf:
                pass
except IntegrityError as err:
    outcome = "refused: " + str(err)[:90]
except Exception as err:
    outcome = "error: " + type(err).__name__
seconds = time.perf_counter() - t
print(json.dumps({{"seconds": seconds, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "outcome": outcome}}))
"""


def _header(name: str, kind: bytes, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.type = kind
    block = bytearray(info.tobuf(format=tarfile.USTAR_FORMAT))
    block[124:136] = b"%011o\x00" % size
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\x00 " % sum(block)
    return bytes(block)


def _pax_record(key: str, value: bytes) -> bytes:
    body = b" " + key.encode() + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n += 1
    return str(n).encode() + body


def _write_gz(path: Path, head: bytes, filler: bytes, filler_bytes: int, tail: bytes = b"") -> None:
    chunk = filler * (1 << 20)
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(head)
        left = filler_bytes
        while left > 0:
            f.write(chunk[: min(left, len(chunk))])
            left -= len(chunk)
        f.write(tail)


def build(folder: Path) -> dict[str, Path]:
    out = {}
    size = 400_000_000
    for name, kind in (("pax_400mb", tarfile.XHDTYPE), ("gnu_longname_400mb", tarfile.GNUTYPE_LONGNAME)):
        p = folder / f"{name}.tar.gz"
        _write_gz(p, _header("././@PaxHeader", kind, size), b"1", size, b"\0" * (2 * BLOCK))
        out[name] = p
    for name, n in (("cve_2024_6232_60k", 60_000), ("cve_2024_6232_1m", 1_000_000)):
        rec = _pax_record("comment", b"1" * n)
        p = folder / f"{name}.tar.gz"
        padded = rec + b"\0" * (-len(rec) % BLOCK)
        _write_gz(p, _header("././@PaxHeader", tarfile.XHDTYPE, len(rec)) + padded, b"", 0, b"\0" * (2 * BLOCK))
        out[name] = p
    return out


def _peak_rss_mib(pid: int) -> float | None:
    """VmHWM of a running child (Linux), read just before it is killed."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def run_child(mode: str, path: Path, timeout: float) -> dict[str, object]:
    code = _CHILD.format(root=str(ROOT))
    t = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", code, mode, str(path)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        out, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        rss = _peak_rss_mib(child.pid)
        child.kill()
        child.communicate()
        return {"seconds": None, "peak_rss_mib": rss, "outcome": f"still running after {timeout:.0f} s (killed)",
                "wall_s": round(time.perf_counter() - t, 1)}
    lines = out.strip().splitlines()
    if not lines:
        return {"seconds": None, "peak_rss_mib": None, "outcome": f"child failed: {err.strip()[-200:]}"}
    result: dict[str, object] = json.loads(lines[-1])
    return result


def _ms(seconds: object) -> str:
    return f"{float(seconds) * 1000:.1f} ms" if isinstance(seconds, float) else "-"


def _mib(value: object) -> str:
    return f"{float(value):.0f} MiB" if isinstance(value, (int, float)) else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds before an unguarded child is killed")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="raftsmith-hostile-") as tmp:
        bundles = build(Path(tmp))
        baseline = run_child("baseline", next(iter(bundles.values())), args.timeout)
        print(f"baseline child (imports only): {baseline['peak_rss_mib']:.0f} MiB")
        for name, path in bundles.items():
            row: dict[str, object] = {"bundle_bytes": path.stat().st_size}
            for mode in ("guarded", "tarfile"):
                row[mode] = run_child(mode, path, args.timeout)
            g, t = row["guarded"], row["tarfile"]
            assert isinstance(g, dict) and isinstance(t, dict)
            if g["seconds"] and t["seconds"]:
                row["time_ratio_tarfile_over_guarded"] = round(t["seconds"] / g["seconds"], 1)
            if g["peak_rss_mib"] and t["peak_rss_mib"]:
                row["rss_ratio_tarfile_over_guarded"] = round(t["peak_rss_mib"] / g["peak_rss_mib"], 2)
            results[name] = row
            print(f"{name} ({row['bundle_bytes']} B): guarded {_ms(g['seconds'])}, {_mib(g['peak_rss_mib'])}, "
                  f"{g['outcome']} | tarfile {_ms(t['seconds'])}, {_mib(t['peak_rss_mib'])}, {t['outcome']}")
    report = {
        "benchmark": "bundle_hostile",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "timeout_s": args.timeout,
        "baseline": baseline,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
