"""What the Status and Report views read from the workspace: real files, tampered ones too."""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

import tomllib

from rag.audit import AuditLog
from rag.config import init_workspace, load_workspace
from rag.evaluate.preferences import append_mark
from rag.evaluate.report import EvalReport, write_outputs
from rag.ui.report import chart_path, latest_report_dir, report_view
from rag.ui.status import workspace_status

REPO = Path(__file__).resolve().parents[4]


def _export(root: Path, payload: bytes = b"GGUF fake model bytes") -> Path:
    import hashlib

    d = root / "gguf" / "kx"
    d.mkdir(parents=True)
    (d / "model.gguf").write_bytes(payload)
    files = [{"path": "model.gguf", "role": "merged", "sha256": hashlib.sha256(payload).hexdigest()},
             {"path": "base.gguf", "role": "base", "sha256": "0" * 64},
             {"path": "../../outside.gguf", "role": "adapter", "sha256": "1" * 64},
             {"path": "Modelfile", "role": "modelfile", "sha256": "2" * 64}]
    (d / "manifest.json").write_text(json.dumps({"format": "raftsmith-export/1", "name": "kx", "family": "smollm2",
                                                 "created_at": "2026-11-30T00:00:00+00:00",
                                                 "base_model": {"id": "HuggingFaceTB/SmolLM2-135M-Instruct"},
                                                 "files": files}))
    return d


def test_status_checks_each_model_file_against_the_export_manifest(tmp_path: Path) -> None:
    ws = init_workspace(tmp_path / "ws")
    d = _export(ws.root)
    st = workspace_status(ws)
    assert st.export is not None and st.export["name"] == "kx" and st.export["manifest"] == "gguf/kx/manifest.json"
    checks = {f.role: f for f in st.files}
    assert set(checks) == {"merged", "base", "adapter"}  # the Modelfile is not a model file
    assert checks["merged"].verified is True
    assert checks["base"].verified is False and checks["base"].problem == "missing"
    assert checks["adapter"].verified is False and "outside the export folder" in str(checks["adapter"].problem)
    assert not st.all_verified
    (d / "model.gguf").write_bytes(b"GGUF tampered bytes!!")  # same size class, other bytes
    again = {f.role: f for f in workspace_status(ws).files}
    assert again["merged"].verified is False and "differs" in str(again["merged"].problem)


def test_status_reports_the_audit_result_and_a_tampered_log(tmp_path: Path) -> None:
    ws = init_workspace(tmp_path / "ws")
    st = workspace_status(ws)
    assert st.audit["ok"] is False and "No audit log" in st.audit["summary"]
    assert st.index["ok"] is False and "raftsmith ingest" in st.index["problem"]
    log = AuditLog.for_workspace(ws)
    for i in range(3):
        log.append("query", query=f"q{i}")
    st = workspace_status(ws)
    assert st.audit["ok"] is True and st.audit["records"] == 3 and "3 records, chain intact" in st.audit["summary"]
    lines = ws.audit_path.read_text().splitlines()
    lines[1] = lines[1].replace('"q1"', '"edited"')
    ws.audit_path.write_text("\n".join(lines) + "\n")
    st = workspace_status(ws)
    assert st.audit["ok"] is False and st.audit["bad_line"] == 2 and "line 2" in st.audit["summary"]


def test_status_shows_the_installed_bundle(tmp_path: Path) -> None:
    ws = init_workspace(tmp_path / "ws")
    assert workspace_status(ws).bundle is None
    ws.state_dir.mkdir(parents=True, exist_ok=True)
    (ws.state_dir / "bundle-manifest.json").write_text(json.dumps(
        {"export_name": "kx", "created_at": "2026-12-01T10:00:00+00:00", "raftsmith_version": "0.1.0",
         "files": [{"path": "a"}, {"path": "b"}]}))
    assert workspace_status(ws).bundle == {"export_name": "kx", "created_at": "2026-12-01T10:00:00+00:00",
                                           "raftsmith_version": "0.1.0", "members": 2}
    (ws.state_dir / "bundle-manifest.json").write_text("{torn")
    assert "unreadable" in workspace_status(ws).bundle["problem"]  # type: ignore[index]


def test_report_is_the_newest_eval_with_table_chart_and_preferences(tmp_path: Path) -> None:
    ws = load_workspace(init_workspace(tmp_path / "ws").config_path)
    view = report_view(ws)
    assert view["found"] is False and "raftsmith eval" in view["hint"] and view["preferences"] is None
    for name, correct in (("20261130T000000Z", 0.1), ("20261201T000000Z", 0.9)):
        out = ws.state_dir / "eval" / name
        out.mkdir(parents=True)
        write_outputs(EvalReport(out, [{"model": "tuned", "rag": True, "n": 4, "correct": correct}], []), ws)
    import os

    os.utime(ws.state_dir / "eval" / "20261130T000000Z" / "results.json", (1, 1))
    assert latest_report_dir(ws) == ws.state_dir / "eval" / "20261201T000000Z"
    append_mark(ws, {"choice": "base"})
    view = report_view(ws)
    assert view["found"] and view["name"] == "20261201T000000Z" and view["chart"] is True
    assert view["header"][:4] == ["model", "RAG", "n", "correct"] and view["rows"][0][:4] == ["tuned", "yes", "4", "0.90"]
    assert "base better 1" in view["preferences"]["line"]


def test_a_chart_that_links_out_of_the_workspace_is_not_served(tmp_path: Path) -> None:
    ws = init_workspace(tmp_path / "ws")
    out = ws.state_dir / "eval" / "20261201T000000Z"
    out.mkdir(parents=True)
    (out / "results.json").write_text(json.dumps({"summary": []}))
    (tmp_path / "outside.png").write_bytes(b"\x89PNG secret")
    (out / "chart.png").symlink_to(tmp_path / "outside.png")
    assert chart_path(ws) is None
    (out / "results.json").write_text("{torn")
    assert "unreadable" in report_view(ws)["hint"]


def test_the_page_assets_ship_as_package_data() -> None:
    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["rag.ui"]
    ui = REPO / "rag" / "ui"
    assets = [p.relative_to(ui).as_posix() for d in ("templates", "static") for p in (ui / d).rglob("*") if p.is_file()]
    assert assets and all(any(fnmatch.fnmatch(a, g) for g in globs) for a in assets), (assets, globs)
