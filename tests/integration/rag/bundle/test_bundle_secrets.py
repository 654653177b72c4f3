"""Secrets inside documents, end to end with a real ingest (MiniLM, FAISS, SQLite):

a document holding the live OPENROUTER_API_KEY value (set in the test env) and an AWS-style key
is ingested (warning: file and kind, never the value), ``bundle create`` refuses the index
until the findings are named with --allow-secret or masked with ``corpus.redact``, and a
masked or edited index leaves no trace of the values anywhere in the bundle's bytes.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest
import yaml

from rag.bundle import create_bundle, install_bundle, verify_bundle
from rag.config import Workspace, load_workspace
from rag.errors import IntegrityError

pytestmark = pytest.mark.integration

LIVE = "sk-or-v1-" + "5d2f8a1c" * 8
AWS = "AKIA" + "J4W8Z2Q6R1T9Y3U5"
DOCS = ["docs/deploy.md", "docs/overview.md"]


def _ws(root: Path, redact: bool) -> Workspace:
    cfg_path = root / "raftsmith.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["corpus"]["redact"] = redact
    cfg_path.write_text(yaml.safe_dump(cfg))
    return load_workspace(cfg_path)


def _store_text(ws: Workspace) -> str:
    con = sqlite3.connect(ws.index_dir / "store.sqlite")
    try:
        return "\n".join(h + t for h, t in con.execute("SELECT heading, text FROM chunks"))
    finally:
        con.close()


def _no_trace(data: bytes, *values: str) -> None:
    for v in values:
        assert v.encode() not in data and v.lower().encode() not in data, "a secret reached the bundle"


@pytest.fixture
def home(sample_workspace: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("OPENROUTER_API_KEY", LIVE)
    (sample_workspace / "docs" / "deploy.md").write_text(
        "# Deploying Kestrel\n\nThe teacher runs with the key " + LIVE + " on the build host.\n\n"
        "## Cloud storage\n\nBackups go to the bucket with access key " + AWS + " (read-only).\n")
    return sample_workspace


def test_ingest_warns_and_bundle_create_refuses_until_named(home: Path, tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    from rag.ingest.pipeline import ingest

    ws = _ws(home, redact=False)
    with caplog.at_level(logging.WARNING):
        report = ingest(ws, paths=DOCS)
    assert report.counts()["ok"] == 2
    assert "docs/deploy.md" in caplog.text and "OPENROUTER_API_KEY" in caplog.text and "AWS" in caplog.text
    assert LIVE not in caplog.text and AWS not in caplog.text
    assert LIVE in _store_text(ws)  # warn only: the document's text is stored as written

    out = tmp_path / "b.tar"
    with pytest.raises(IntegrityError, match=r"index/store\.sqlite \(a chunk of docs/deploy\.md\)") as err:
        create_bundle(ws, out)
    msg = str(err.value)
    assert "OPENROUTER_API_KEY" in msg and "corpus.redact" in msg and "--allow-secret" in msg
    assert LIVE not in msg and AWS not in msg
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".raftsmith-bundle")]

    with pytest.raises(IntegrityError, match="AWS access key"):  # naming one finding lets only that one through
        create_bundle(ws, out, allow_secrets=["OPENROUTER_API_KEY"])
    rep = create_bundle(ws, out, allow_secrets=["OPENROUTER_API_KEY", "aws-key"])
    assert rep.members > 0 and verify_bundle(out).members == rep.members
    with pytest.raises(Exception, match="names no key shape"):
        create_bundle(ws, tmp_path / "c.tar", allow_secrets=["not-a-thing"])


def test_redacted_index_bundles_with_no_trace(home: Path, tmp_path: Path) -> None:
    from rag.index.store import IndexStore, load_faiss
    from rag.ingest.pipeline import ingest

    ingest(_ws(home, redact=False), paths=DOCS)
    ws = _ws(home, redact=True)
    ingest(ws, paths=DOCS)  # switching corpus.redact re-chunks the stored texts
    text = _store_text(ws)
    assert LIVE not in text and AWS not in text and "[redacted aws-key]" in text
    store = IndexStore(ws.index_dir)
    try:
        n = store.count_chunks()
    finally:
        store.close()
    loaded = load_faiss(ws.index_dir)
    assert loaded is not None and loaded[0].ntotal == n  # the index stays consistent

    out = tmp_path / "b.tar.gz"
    create_bundle(ws, out)
    dest = tmp_path / "laptop"
    install_bundle(out, dest)
    import gzip

    _no_trace(gzip.decompress(out.read_bytes()), LIVE, AWS)
    for p in dest.rglob("*"):
        if p.is_file():
            _no_trace(p.read_bytes(), LIVE, AWS)


def test_edited_document_leaves_no_trace_in_the_bundle(home: Path, tmp_path: Path) -> None:
    """Deleted chunks linger in SQLite free pages and FTS5 segments; the bundled copy drops them."""
    from rag.ingest.pipeline import ingest

    ws = _ws(home, redact=False)
    ingest(ws, paths=DOCS)
    (home / "docs" / "deploy.md").write_text("# Deploying Kestrel\n\nKeys live in the keyring now.\n")
    ingest(ws, paths=DOCS)
    assert AWS not in _store_text(ws)
    out = tmp_path / "b.tar"
    create_bundle(ws, out)
    _no_trace(out.read_bytes(), LIVE, AWS)
