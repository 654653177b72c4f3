"""``raftsmith ingest`` / ``raftsmith search`` through click's CliRunner."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from rag.cli.main import cli
from rag.config import init_workspace

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[4]
CHUNK_KEYS = {"chunk_id", "source", "heading", "start_line", "end_line", "text", "score"}


@pytest.fixture(scope="module")
def ws_cfg(tmp_path_factory: pytest.TempPathFactory) -> str:
    ws = init_workspace(tmp_path_factory.mktemp("cli") / "ws", corpus_name="kestrel")
    shutil.rmtree(ws.root / "docs")
    shutil.copytree(REPO / "examples" / "kestrel" / "docs", ws.root / "docs")
    (ws.root / "docs" / "broken.txt").write_bytes(b"\x00\x01\x02 binary")
    return str(ws.config_path)


def test_ingest_json_then_table(ws_cfg: str) -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["ingest", "--json", "--config", ws_cfg])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["counts"] == {"ok": 14, "skipped": 1, "error": 0}
    assert report["chunks_added"] == report["embeddings_computed"] == report["total_chunks"] > 0
    broken = next(f for f in report["files"] if f["source"] == "docs/broken.txt")
    assert broken["status"] == "skipped" and "binary" in broken["reason"]
    res = runner.invoke(cli, ["ingest", "--config", ws_cfg])
    assert res.exit_code == 0, res.output
    assert "Ingest summary" in res.output and "binary file" in res.output
    assert "0 / 0 / 14 / 0" in res.output  # added / updated / unchanged / removed


def test_search_json_shape(ws_cfg: str) -> None:
    runner = CliRunner()
    assert runner.invoke(cli, ["ingest", "-q", "--config", ws_cfg]).exit_code == 0
    for mode in ("dense", "bm25", "hybrid"):
        res = runner.invoke(cli, ["search", "Which port does the admin console use?", "-k", "3", "--mode", mode,
                                  "--json", "--config", ws_cfg])
        assert res.exit_code == 0, res.output
        chunks = json.loads(res.stdout)
        assert len(chunks) == 3
        for c in chunks:
            assert set(c) >= CHUNK_KEYS
            assert isinstance(c["start_line"], int) and isinstance(c["score"], float)
            assert len(c["chunk_id"]) == 64
        assert any("9112" in c["text"] for c in chunks), mode
    res = runner.invoke(cli, ["search", "admin console", "--config", ws_cfg])
    assert res.exit_code == 0 and "docs/" in res.output


def test_search_queries_file_one_line_per_query(ws_cfg: str, tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(cli, ["ingest", "-q", "--config", ws_cfg]).exit_code == 0
    qf = tmp_path / "q.txt"
    qf.write_text("sensor ingest port\n\nadmin console port\nfan module part number\n")
    res = runner.invoke(cli, ["search", "--queries-file", str(qf), "-k", "2", "--json", "--config", ws_cfg])
    assert res.exit_code == 0, res.output
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 3
    parsed = [json.loads(ln) for ln in lines]
    assert all(len(x) == 2 for x in parsed)
    assert "7431" in parsed[0][0]["text"] + parsed[0][1]["text"]
    assert "9112" in parsed[1][0]["text"] + parsed[1][1]["text"]


def test_user_errors_exit_1(tmp_path: Path, ws_cfg: str) -> None:
    runner = CliRunner()
    empty = init_workspace(tmp_path / "empty")
    res = runner.invoke(cli, ["search", "x", "--config", str(empty.config_path)])
    assert res.exit_code == 1 and "raftsmith ingest" in res.output
    res = runner.invoke(cli, ["search", "--config", ws_cfg])
    assert res.exit_code == 1 and "QUERY" in res.output
