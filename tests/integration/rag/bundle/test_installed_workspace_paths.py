"""A home config full of outside paths, bundled and installed: a later ingest in the installed
workspace (real MiniLM from the bundle, FAISS, SQLite) reads and writes only inside it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from rag.bundle import create_bundle, install_bundle
from rag.cli.main import cli
from rag.config import load_workspace

pytestmark = pytest.mark.integration


def _tree(root: Path, skip: Path) -> dict[str, tuple[int, int] | str]:
    out: dict[str, tuple[int, int] | str] = {}
    for p in sorted(root.rglob("*")):
        if p == skip or skip in p.parents:
            continue
        out[str(p.relative_to(root))] = "dir" if p.is_dir() else (p.stat().st_size, p.stat().st_mtime_ns)
    return out


def test_ingest_in_installed_workspace_stays_inside(sample_workspace: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from rag.ingest.pipeline import ingest

    outside = tmp_path / "outside"
    (outside / "docs").mkdir(parents=True)
    (outside / "docs" / "elsewhere.md").write_text("# Elsewhere\n\nThis folder is not part of any workspace.\n")
    cfg_path = sample_workspace / "raftsmith.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["corpus"]["paths"] = [str(sample_workspace / "docs" / "overview.md"), str(outside / "docs")]
    cfg["index"]["path"] = str(outside / "home-index")
    cfg["student"]["output_dir"] = str(outside / "runs")
    cfg["audit"]["path"] = str(outside / "audit.jsonl")
    cfg_path.write_text(yaml.safe_dump(cfg))
    ws = load_workspace(cfg_path)
    ingest(ws)  # home: reads both absolute paths, writes the outside index
    assert (outside / "home-index" / "store.sqlite").is_file()

    out = tmp_path / "kestrel.tar"
    rep = create_bundle(ws, out)
    assert any("corpus.paths" in w and "overview.md" in w and "'docs/overview.md'" in w for w in rep.warnings)
    assert any("left out" in w and str(outside / "docs") in w for w in rep.warnings)
    dest = tmp_path / "laptop" / "kestrel"
    install_bundle(out, dest)
    assert load_workspace(dest / "raftsmith.yaml").config.corpus.paths == ["docs/overview.md"]
    cfg2 = yaml.safe_load((dest / "raftsmith.yaml").read_text())
    cfg2["corpus"]["paths"] = ["docs"]  # the laptop user's own documents
    (dest / "raftsmith.yaml").write_text(yaml.safe_dump(cfg2))
    (dest / "docs").mkdir()
    (dest / "docs" / "laptop-notes.md").write_text("# Laptop notes\n\nThe relay listens on port 7431.\n")

    before = _tree(tmp_path, skip=dest)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    res = CliRunner().invoke(cli, ["ingest", "--json", "--config", str(dest / "raftsmith.yaml")])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    sources = [f["source"] for f in report["files"]]
    assert sources and all(not os.path.isabs(s) and ".." not in Path(s).parts for s in sources), sources
    assert any("laptop-notes" in s for s in sources) and not any("elsewhere" in s for s in sources)
    assert Path(report["index_dir"]) == dest / "index"
    after = _tree(tmp_path, skip=dest)
    assert after == {**before, "cwd": "dir"}, "ingest touched something outside the installed workspace"
    assert os.listdir(elsewhere) == []
    hits = CliRunner().invoke(cli, ["search", "Which port does the relay listen on?", "-k", "2", "--json",
                                    "--config", str(dest / "raftsmith.yaml")])
    assert hits.exit_code == 0 and "laptop-notes" in hits.output
