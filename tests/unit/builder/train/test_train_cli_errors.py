"""`raftsmith train` / `raftsmith export` user errors: exit 1 with a message naming the fix."""

from __future__ import annotations

import json

from click.testing import CliRunner

from rag.cli.main import cli
from rag.config import init_workspace


def test_train_without_data_names_generate(tmp_path):
    ws = init_workspace(tmp_path / "ws", corpus_name="kestrel")
    res = CliRunner().invoke(cli, ["train", "--backend", "hf", "--config", str(ws.config_path)])
    assert res.exit_code == 1
    assert "kestrel.train.jsonl does not exist" in res.output and "raftsmith generate" in res.output


def test_train_with_bad_rows_names_the_line(tmp_path):
    ws = init_workspace(tmp_path / "ws", corpus_name="kestrel")
    bad = ws.training_dir / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "q"}]}) + "\n")
    res = CliRunner().invoke(cli, ["train", "--train-file", str(bad), "--config", str(ws.config_path)])
    assert res.exit_code == 1 and "bad.jsonl:1" in res.output and "no assistant message" in res.output
    bad.write_text("{not json\n")
    res = CliRunner().invoke(cli, ["train", "--train-file", str(bad), "--config", str(ws.config_path)])
    assert res.exit_code == 1 and "bad.jsonl:1 is not valid JSON" in res.output


def test_export_before_training_names_train(tmp_path):
    ws = init_workspace(tmp_path / "ws")
    res = CliRunner().invoke(cli, ["export", "--config", str(ws.config_path)])
    assert res.exit_code == 1 and "raftsmith train" in res.output


def test_resume_with_nothing_to_resume(tmp_path):
    ws = init_workspace(tmp_path / "ws", corpus_name="kestrel")
    res = CliRunner().invoke(cli, ["train", "--resume", "--config", str(ws.config_path)])
    assert res.exit_code == 1 and "Nothing to resume" in res.output
