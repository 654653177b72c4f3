"""The teacher cache under concurrency: gets and puts from many threads with close racing them.

A generate run once died with SIGSEGV: a reply was stored on a worker thread while the run,
failing on another request, closed the cache's sqlite3 connection. A crash kills the whole
interpreter, so each round runs in a child process and the test reads its exit status.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

STRESS = textwrap.dedent(
    """
    import random, sys, threading
    from pathlib import Path
    from builder.generate.teacher import TeacherCache

    root = Path(sys.argv[1])
    rounds, workers = int(sys.argv[2]), int(sys.argv[3])
    for r in range(rounds):
        path = root / f"cache-{r}.sqlite"
        cache = TeacherCache(path)
        stored, lock = [], threading.Lock()
        start = threading.Barrier(workers + 1)

        def work(w):
            start.wait()
            for i in range(200):
                key = ("p", "m", "v", f"{w}-{i}", "0")
                if cache.put(key, "x" * random.randint(1, 4000), 1, 2):
                    with lock:
                        stored.append(key)
                cache.get(("p", "m", "v", f"{w}-{random.randint(0, i)}", "0"))

        threads = [threading.Thread(target=work, args=(w,)) for w in range(workers)]
        for t in threads:
            t.start()
        start.wait()
        threading.Event().wait(random.uniform(0, 0.02))
        cache.close()  # races the workers' gets and puts
        for t in threads:
            t.join()
        again = TeacherCache(path)
        missing = [k for k in stored if again.get(k) is None]
        again.close()
        assert not missing, f"round {r}: {len(missing)} stored replies are missing"
    print("ok", rounds)
    """
)


def test_cache_survives_close_racing_gets_and_puts(tmp_path: Path, repo_root: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", STRESS, str(tmp_path), "60", "8"],
        cwd=repo_root, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, f"exit {proc.returncode} (negative: killed by signal)\n{proc.stderr[-2000:]}"
    assert proc.stdout.strip() == "ok 60"


def test_put_and_get_after_close_do_nothing(tmp_path: Path) -> None:
    from builder.generate.teacher import TeacherCache

    cache = TeacherCache(tmp_path / "c.sqlite")
    assert cache.put(("p", "m", "v", "h", "0"), "reply", 1, 2)
    cache.close()
    cache.close()  # idempotent
    assert not cache.put(("p", "m", "v", "h2", "0"), "late", 1, 2)
    assert cache.get(("p", "m", "v", "h", "0")) is None
    again = TeacherCache(tmp_path / "c.sqlite")
    assert again.get(("p", "m", "v", "h", "0")) == ("reply", 1, 2)
    assert again.get(("p", "m", "v", "h2", "0")) is None
    again.close()


def test_first_error_waits_for_requests_in_flight() -> None:
    """The run raises its first error only once every request in flight has finished, and
    requests not started by then do not start."""
    from builder.generate.engine import _Runner

    runner = _Runner.__new__(_Runner)
    runner.stop = False
    finished: list[str] = []
    started: list[str] = []

    async def failing() -> None:
        await asyncio.sleep(0.01)
        raise RuntimeError("fatal 401")

    async def slow(name: str) -> None:
        started.append(name)
        await asyncio.sleep(0.2)
        finished.append(name)

    async def late() -> None:
        await asyncio.sleep(0.05)
        if runner.stop:
            return
        started.append("late")

    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="fatal 401"):
        asyncio.run(runner._all([failing(), slow("a"), slow("b"), late()]))
    assert time.monotonic() - t0 >= 0.19
    assert finished == ["a", "b"] and "late" not in started
