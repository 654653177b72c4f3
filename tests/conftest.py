"""Test isolation and shared paths.

Every test runs with HOME and XDG dirs in a temp dir and the null keyring backend (no test can touch
the developer's real keyring or config), offline hub settings, and fixtures for the packaged
models and the sample corpus.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SAMPLE = REPO / "examples" / "kestrel"

# Session-wide isolation, set before any fixture runs: module- and session-scoped fixtures
# start before the per-test fixture below, and the keyring picks its backend once per
# process. Nothing a test does may reach the developer's real home, keyring or the hub.
_SESSION_HOME = tempfile.mkdtemp(prefix="raftsmith-test-home-")
os.environ["HOME"] = _SESSION_HOME
os.environ["PYTHON_KEYRING_BACKEND"] = "keyring.backends.null.Keyring"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("RAFTSMITH_CACHE", str(REPO / ".raftsmith-cache"))


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / ".local" / "share"))
    # Keyring: the null backend (stores nothing), never the OS keyring; tests that need a
    # working keyring install tests/keyring_double.py themselves.
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.null.Keyring")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.delenv("RAFTSMITH_CONFIG", raising=False)
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    for var in ("OPENROUTER_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    # Tests that swap the keyring backend restore it; this makes sure each test starts on null.
    import keyring
    from keyring.backends.null import Keyring as NullKeyring

    keyring.set_keyring(NullKeyring())
    # Shared, expensive caches (HF folder of SmolLM2 built from the GGUF, llama.cpp sources)
    # stay outside the temp home so they are built once per machine.
    monkeypatch.setenv("RAFTSMITH_CACHE", os.environ["RAFTSMITH_CACHE"])


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


def require_shared() -> Path:
    """The peer data in ../shared: a user's clone has none, so its tests skip, naming why.

    Under CI (``CI=true``) the folder is laid beside the checkout, so a missing one is an
    error there, never a silent skip.
    """
    if SHARED.is_dir():
        return SHARED
    if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
        pytest.fail(f"{SHARED} is missing under CI=true: CI lays the shared/ folder beside the checkout")
    pytest.skip(f"needs the peer data in {SHARED} (beside a developer's checkout, not in a user's clone)")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return require_shared()


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    from rag.packaged import smollm2_gguf

    return smollm2_gguf()


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    from rag.packaged import minilm_dir

    return minilm_dir()


@pytest.fixture
def sample_workspace(tmp_path: Path) -> Path:
    """A fresh workspace holding a copy of the sample corpus and its question sets."""
    from rag.config import init_workspace

    ws = init_workspace(tmp_path / "ws", corpus_name="kestrel")
    shutil.rmtree(ws.root / "docs")
    shutil.copytree(SAMPLE / "docs", ws.root / "docs")
    for f in (REPO / "domain_questions").glob("kestrel*.yaml"):
        shutil.copy(f, ws.root / "domain_questions" / f.name)
    return ws.root
