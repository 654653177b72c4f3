"""The wheel a pip user installs: every package, and the Modelfile templates export needs.

The repository layout puts the templates in the top-level ``modelfiles/`` folder; the wheel
carries them as ``builder/modelfiles``. These tests build the real wheel from a copy of the
checkout and run ``templates_dir()`` from an install of it outside the checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _package_dirs() -> set[str]:
    return {str(p.parent.relative_to(REPO)).replace(os.sep, ".")
            for top in ("rag", "builder") for p in (REPO / top).rglob("__init__.py")}


def test_every_package_is_listed_in_pyproject() -> None:
    tomllib = pytest.importorskip("tomllib")
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    missing = _package_dirs() - listed
    assert not missing, f"add {sorted(missing)} to [tool.setuptools] packages in pyproject.toml"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in ("rag", "builder", "modelfiles"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                           "-w", str(out), "-q"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (whl,) = out.glob("raftsmith-*.whl")
    return whl


def test_wheel_has_all_code_and_the_templates(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    code = {str(p.relative_to(REPO)).replace(os.sep, "/") for top in ("rag", "builder") for p in (REPO / top).rglob("*.py")}
    assert not code - names, sorted(code - names)[:5]
    templates = {f"builder/modelfiles/{p.name}" for p in (REPO / "modelfiles").iterdir() if p.suffix in (".tmpl", ".md")}
    assert templates and templates <= names
    reports = {str(p.relative_to(REPO)) for p in (REPO / "rag" / "evaluate" / "templates").glob("*.j2")}
    assert reports and reports <= names, "the eval report templates must ship as package data"
    data = {"rag/evaluate/data/general_knowledge.yaml", "builder/train/data/replay_prompts.yaml"}
    assert data <= names, "the forgetting probe and the replay prompts must ship as package data"


def test_export_finds_the_templates_in_an_install_outside_the_checkout(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                           str(target), str(wheel)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    probe = ("import builder.export.modelfile as m; from builder.families import CHAT_FORMATS as F; "
             "print(m.templates_dir()); print(len(m.load_template(F['chatml']) or ''))")
    # The install goes first on sys.path, ahead of the editable install of the checkout.
    run = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(target)!r}); {probe}"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    where, size = run.stdout.split()
    assert Path(where) == target / "builder" / "modelfiles"
    assert int(size) > 100
