"""The ingest-time secret scan (rag.ingest.secret_scan) on real chunks from the real chunker:
a warning names the file and the kind, never the value; corpus.redact masks the stored text."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from rag.config import init_workspace, load_workspace
from rag.ingest.chunker import Chunker
from rag.ingest.parsers import parse_bytes
from rag.ingest.secret_scan import scan_chunks

LIVE = "sk-or-v1-" + "7c1e0a9b" * 8
AWS = "AKIA" + "Q7XK2M4N8P3R5T6W"
DOC = (f"# Deploy\n\nThe build uses the key {LIVE} for the teacher.\n\n"
       f"## Cloud\n\nOld credentials: {AWS} (rotated).\n\n## Safe\n\nNothing secret here.\n")


def _chunks(tmp_path: Path, redact: bool, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("OPENROUTER_API_KEY", LIVE)
    ws = init_workspace(tmp_path / "ws")
    cfg = yaml.safe_load(ws.config_path.read_text())
    cfg["corpus"]["redact"] = redact
    ws.config_path.write_text(yaml.safe_dump(cfg))
    ws = load_workspace(ws.config_path)
    specs = Chunker(lambda t: len(t.split()), 40, 0).chunk(parse_bytes(DOC.encode(), "markdown", "deploy.md"),
                                                          "docs/deploy.md")
    return ws, specs


def test_warns_naming_file_and_kind_never_the_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    ws, specs = _chunks(tmp_path, False, monkeypatch)
    with caplog.at_level(logging.WARNING):
        out = scan_chunks(ws, "docs/deploy.md", specs)
    assert [s.text for s in out] == [s.text for s in specs]  # warn only
    text = caplog.text
    assert "docs/deploy.md" in text and "OPENROUTER_API_KEY" in text and "AWS access key" in text
    assert "corpus.redact" in text
    assert LIVE not in text and LIVE[:16] not in text and AWS not in text


def test_redact_masks_the_stored_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      caplog: pytest.LogCaptureFixture) -> None:
    ws, specs = _chunks(tmp_path, True, monkeypatch)
    with caplog.at_level(logging.WARNING):
        out = scan_chunks(ws, "docs/deploy.md", specs)
    joined = "\n".join(s.heading + s.text for s in out)
    assert LIVE not in joined and AWS not in joined
    assert "[redacted OPENROUTER_API_KEY]" in joined and "[redacted aws-key]" in joined
    assert "Nothing secret here." in joined and "masked" in caplog.text
    assert [s.chunk_id for s in out] == [s.chunk_id for s in specs]  # same chunks, new text


def test_clean_document_is_silent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  caplog: pytest.LogCaptureFixture) -> None:
    ws, _ = _chunks(tmp_path, True, monkeypatch)
    specs = Chunker(lambda t: len(t.split()), 40, 0).chunk(
        parse_bytes(b"# Ports\n\nThe api_key: field is documented here.\n", "markdown", "p.md"), "docs/p.md")
    with caplog.at_level(logging.WARNING):
        out = scan_chunks(ws, "docs/p.md", specs)
    assert out == specs and caplog.text == ""
