from __future__ import annotations

import logging
from pathlib import Path

import pytest
from click.testing import CliRunner

from rag.cli.main import cli
from rag.config import ConfigError, init_workspace, load_workspace, parse_config


def test_defaults_are_valid() -> None:
    cfg = parse_config({})
    assert cfg.chat.backend == "llama-cpp"
    assert cfg.raft.p_oracle == 0.8
    assert cfg.raft.n_distractors == 4


def test_error_names_key_and_fix() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"chat": {"top_k": 0}, "raft": {"p_oracle": 1.5}})
    msg = str(err.value)
    assert "chat.top_k" in msg and "raft.p_oracle" in msg
    assert "Fix these keys" in msg


def test_wrong_enum_is_named() -> None:
    with pytest.raises(ConfigError, match="chat.backend"):
        parse_config({"chat": {"backend": "gpt"}})


def test_unknown_keys_warn_not_fail(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        cfg = parse_config({"chat": {"top_kk": 3}, "extra_section": {}})
    assert cfg.chat.top_k == 5
    text = caplog.text
    assert "chat.top_kk" in text and "extra_section" in text


def test_top_level_must_be_mapping() -> None:
    with pytest.raises(ConfigError, match="mapping"):
        parse_config(["a"])  # type: ignore[arg-type]


def test_bad_corpus_name() -> None:
    with pytest.raises(ConfigError, match="corpus"):
        parse_config({"corpus": {"name": "a/b"}})


def test_init_and_load_roundtrip(tmp_path: Path) -> None:
    ws = init_workspace(tmp_path / "w", corpus_name="acme")
    assert ws.config.corpus.name == "acme"
    for d in ("docs", "domain_questions", "training_data", "gguf", ".raftsmith"):
        assert (ws.root / d).is_dir()
    again = load_workspace(ws.root / "raftsmith.yaml")
    assert again.config == ws.config
    with pytest.raises(ConfigError, match="--force"):
        init_workspace(tmp_path / "w")


def test_load_finds_config_upward(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    init_workspace(tmp_path / "w")
    deep = tmp_path / "w" / "docs" / "sub"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    assert load_workspace().root == (tmp_path / "w").resolve()


def test_missing_config_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="raftsmith init"):
        load_workspace()


def test_invalid_yaml(tmp_path: Path) -> None:
    p = tmp_path / "raftsmith.yaml"
    p.write_text("chat: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_workspace(p)


def test_relative_paths_resolve_against_workspace(tmp_path: Path) -> None:
    ws = init_workspace(tmp_path / "w")
    assert ws.index_dir == (tmp_path / "w").resolve() / ".raftsmith" / "index"
    assert ws.path("/abs/x") == Path("/abs/x")


def test_cli_init_and_help(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["--help"])
    assert res.exit_code == 0
    for verb in ("ingest", "search", "generate", "train", "export", "ask", "bundle", "demo"):
        assert verb in res.output
    res = runner.invoke(cli, ["init", str(tmp_path / "ws"), "--name", "acme"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "ws" / "raftsmith.yaml").is_file()
    res = runner.invoke(cli, ["init", str(tmp_path / "ws")])
    assert res.exit_code == 1
    assert "--force" in res.output
