"""``raftsmith ui`` on the command line: registered, loopback by default, clear refusals."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from rag.cli.main import cli
from rag.config import init_workspace


def test_ui_is_listed_and_defaults_to_loopback() -> None:
    res = CliRunner().invoke(cli, ["--help"])
    assert res.exit_code == 0 and "ui " in res.output
    res = CliRunner().invoke(cli, ["ui", "--help"])
    assert res.exit_code == 0 and "127.0.0.1" in res.output and "--allow-remote" in res.output


def test_ui_refuses_a_non_loopback_host_without_allow_remote(tmp_path: Path) -> None:
    ws = init_workspace(tmp_path / "ws")
    res = CliRunner().invoke(cli, ["ui", "--host", "0.0.0.0", "--port", "0", "--config", str(ws.config_path)])
    assert res.exit_code == 1 and "--allow-remote" in res.output and "Traceback" not in res.output
    assert not ws.audit_path.exists()  # nothing was started, nothing logged
