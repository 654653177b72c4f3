"""`bundle create --allow-secret NAME`: only the named finding travels, and unknown names are refused."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner
from test_bundle import make_workspace, ws  # noqa: F401 - shared fixtures

from rag.cli.main import cli
from rag.config import Workspace

AWS = "AKIA" + "Z9Y8X7W6V5U4T3S2"


def test_cli_allow_secret_names_the_finding(ws: Workspace, tmp_path: Path) -> None:  # noqa: F811
    (ws.root / "domain_questions" / "cloud.yaml").write_text(f"- question: Which key id?\n  answer: {AWS}\n")
    runner = CliRunner()
    out = tmp_path / "b.tar"
    refused = runner.invoke(cli, ["bundle", "create", str(out), "--config", str(ws.config_path)])
    assert refused.exit_code == 1 and "--allow-secret aws-key" in refused.output and AWS not in refused.output
    assert not out.exists()
    typo = runner.invoke(cli, ["bundle", "create", str(out), "--allow-secret", "aws", "--config", str(ws.config_path)])
    assert typo.exit_code == 1 and "names no key shape" in typo.output and "aws-key" in typo.output
    ok = runner.invoke(cli, ["bundle", "create", str(out), "--allow-secret", "aws-key", "--config", str(ws.config_path)])
    assert ok.exit_code == 0, ok.output
    assert out.is_file()
