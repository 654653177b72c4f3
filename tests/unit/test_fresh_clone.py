"""A user's clone has no ../shared: tests that need it skip, naming why; under CI=true they fail.

The real conftest runs in a child pytest inside a temporary "checkout" with no shared/
folder beside it, so the rule is checked as a newcomer meets it, not by calling a function.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

NEEDS_SHARED = '''
def test_needs_peer_data(shared_dir):
    assert (shared_dir / "peer").is_dir()

def test_plain():
    assert True
'''


def _run(tmp_path: Path, repo_root: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    clone = tmp_path / "clone"
    (clone / "tests").mkdir(parents=True)
    shutil.copy(repo_root / "tests" / "conftest.py", clone / "tests" / "conftest.py")
    (clone / "tests" / "test_peer.py").write_text(NEEDS_SHARED)
    assert not (clone.parent / "shared").exists()
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = str(repo_root)  # rag/ for the conftest's fixtures
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests"],
                          cwd=clone, env=env, capture_output=True, text=True, timeout=300)


def test_missing_shared_skips_with_the_reason_outside_ci(tmp_path: Path, repo_root: Path) -> None:
    proc = _run(tmp_path, repo_root, None)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "1 passed, 1 skipped" in proc.stdout
    assert "SKIPPED" in proc.stdout and "needs the peer data in" in proc.stdout and "shared" in proc.stdout


def test_missing_shared_fails_under_ci(tmp_path: Path, repo_root: Path) -> None:
    proc = _run(tmp_path, repo_root, "true")
    assert proc.returncode == 1, proc.stdout[-2000:]
    assert "1 failed, 1 passed" in proc.stdout or "1 passed, 1 error" in proc.stdout, proc.stdout[-2000:]
    assert "missing under CI=true" in proc.stdout
