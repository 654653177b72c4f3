"""The laptop side must import and run without the training stack (no trl/peft/unsloth)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]

BLOCKER = textwrap.dedent(
    """
    import importlib.abc, sys
    BLOCKED = ("trl", "peft", "unsloth", "bitsandbytes", "builder")
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"blocked for this test: {name}")
            return None
    sys.meta_path.insert(0, Block())
    """
)


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(code)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_every_rag_module_imports_without_training_stack() -> None:
    res = _run(
        """
        import importlib, pkgutil, rag
        names = [m.name for m in pkgutil.walk_packages(rag.__path__, "rag.")]
        for n in names:
            importlib.import_module(n)
        heavy = [m for m in ("torch", "transformers", "trl", "peft", "faiss", "llama_cpp") if m in sys.modules]
        print(len(names), "modules; heavy imported at import time:", heavy)
        assert not heavy, heavy
        """
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "modules" in res.stdout


def test_cli_help_and_builder_verbs_explain_the_missing_extra() -> None:
    res = _run(
        """
        import sys
        from click.testing import CliRunner
        from rag.cli.main import cli
        r = CliRunner().invoke(cli, ["--help"])
        assert r.exit_code == 0 and "ask" in r.output, r.output
        r = CliRunner().invoke(cli, ["train"])
        assert r.exit_code != 0
        assert "raftsmith[build]" in r.output, r.output
        print("ok")
        """
    )
    assert res.returncode == 0, res.stderr[-2000:] + res.stdout[-2000:]
    assert "ok" in res.stdout
