"""Arena marks: appended one line each, summarised as the human-preference row."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag.config import init_workspace
from rag.errors import ConfigError
from rag.evaluate.preferences import append_mark, marks_path, summarize_marks


def test_marks_are_appended_and_counted(tmp_path: Path) -> None:
    ws = init_workspace(tmp_path / "ws")
    assert summarize_marks(ws) is None
    for choice in ("tuned", "tuned", "base", "both_wrong", "tuned"):
        append_mark(ws, {"choice": choice, "question": "q"})
    s = summarize_marks(ws)
    assert s is not None
    assert (s.marks, s.tuned, s.base, s.both_wrong, s.unreadable) == (5, 3, 1, 1, 0)
    assert s.tuned_win_rate == 0.75  # 3 of the 4 decided marks
    assert "tuned better 3, base better 1, both wrong 1" in s.line()
    assert len(marks_path(ws).read_text().splitlines()) == 5


def test_a_bad_choice_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    ws = init_workspace(tmp_path / "ws")
    append_mark(ws, {"choice": "base"})
    with pytest.raises(ConfigError, match="base, tuned, both_wrong"):
        append_mark(ws, {"choice": "<script>"})
    assert summarize_marks(ws).marks == 1  # type: ignore[union-attr]


def test_damaged_lines_are_skipped_and_named(tmp_path: Path) -> None:
    ws = init_workspace(tmp_path / "ws")
    append_mark(ws, {"choice": "tuned"})
    with marks_path(ws).open("ab") as f:
        f.write(b'{"choice": "tun')  # a torn write
        f.write(b"\n[1, 2]\n")
    append_mark(ws, {"choice": "base"})
    s = summarize_marks(ws)
    assert s is not None and (s.marks, s.unreadable) == (2, 2)
    assert "2 unreadable line(s)" in s.line()
    assert s.tuned_win_rate == 0.5


def test_eval_preferences_prints_the_row(tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from rag.cli.main import cli

    ws = init_workspace(tmp_path / "ws")
    cfg = str(ws.config_path)
    res = CliRunner().invoke(cli, ["eval", "--preferences", "--config", cfg])
    assert res.exit_code == 0 and "No arena marks yet" in res.output
    for choice in ("tuned", "both_wrong"):
        append_mark(ws, {"choice": choice})
    res = CliRunner().invoke(cli, ["eval", "--preferences", "--config", cfg])
    assert res.exit_code == 0 and "Human preference (arena, 2 marks): tuned better 1, base better 0, both wrong 1" in res.output
    res = CliRunner().invoke(cli, ["eval", "--preferences", "--json", "--config", cfg])
    row = json.loads(res.stdout)["human_preference"]
    assert row["marks"] == 2 and row["tuned_win_rate"] == 1.0
