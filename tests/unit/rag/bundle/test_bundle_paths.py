"""Config paths in a bundle stay inside the installed workspace (rag.bundle.paths), and a
killed install's hidden folder is cleaned up by the next one."""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import yaml
from test_bundle import bundle, make_workspace, ws  # noqa: F401 - shared fixtures

from rag.bundle import create_bundle, install_bundle, seal_manifest
from rag.bundle.paths import CONFIG_PATHS, outside_paths, outside_reason
from rag.config import RaftsmithConfig, Workspace, load_workspace
from rag.errors import IntegrityError

REPO = Path(__file__).resolve().parents[4]


def _tree(root: Path) -> dict[str, tuple[int, int] | str]:
    return {str(p.relative_to(root)): "dir" if p.is_dir() else (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


def _rebuild(src: Path, dst: Path, replace: dict[str, bytes]) -> None:
    """Rewrite members and reseal the manifest consistently, as an attacker could."""
    with tarfile.open(src) as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf.getmembers()]  # type: ignore[union-attr]
    body = json.loads(members[0][1])
    body.pop("manifest_sha256")
    for e in body["members"]:
        if e["path"] in replace:
            e["size"], e["sha256"] = len(replace[e["path"]]), hashlib.sha256(replace[e["path"]]).hexdigest()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for info, payload in members:
            payload = seal_manifest(body) if info.name == "manifest.json" else replace.get(info.name, payload)
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
    dst.write_bytes(buf.getvalue())


@pytest.mark.parametrize(
    ("value", "reason"),
    [("/etc/passwd", "absolute"), ("~/docs", "home folder"), ("../up", "'..'"), ("a/../../b", "'..'"),
     ("C:\\x", "absolute"), ("docs\\x", "backslash"), ("$HOME/x", "'$'")],
)
def test_outside_reasons(value: str, reason: str, tmp_path: Path) -> None:
    got = outside_reason(value, tmp_path)
    assert got is not None and reason in got


def test_inside_values_and_symlinks(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    assert outside_reason("docs", tmp_path) is None and outside_reason(".raftsmith/index", tmp_path) is None
    assert outside_reason("sentence-transformers/all-MiniLM-L6-v2", tmp_path) is None  # a hub id
    (tmp_path / "link").symlink_to("/etc")
    assert "symlink" in str(outside_reason("link/x", tmp_path))


def test_table_covers_every_path_key_of_the_config(tmp_path: Path) -> None:
    """Each listed key exists in the config model; an outside value in each is found."""
    cfg = RaftsmithConfig()
    for entry in CONFIG_PATHS:
        section, field = entry.key.split(".")
        assert field in type(getattr(cfg, section)).model_fields, entry.key
        setattr(getattr(cfg, section), field, ["/abs"] if entry.kind == "paths" else "/abs")
    assert sorted(k for k, _, _ in outside_paths(cfg, tmp_path)) == sorted(e.key for e in CONFIG_PATHS)


def test_create_rewrites_outside_paths_and_install_keeps_everything_inside(ws: Workspace,  # noqa: F811
                                                                            tmp_path: Path) -> None:
    outside = tmp_path / "home-elsewhere"
    cfg = yaml.safe_load(ws.config_path.read_text())
    cfg["corpus"]["paths"] = [str(outside / "docs"), "docs", "https://example.org/llms.txt"]
    cfg["student"]["output_dir"] = str(outside / "runs")
    cfg["chat"]["model"] = str(outside / "model.gguf")
    cfg["student"]["base"] = str(outside / "base")
    cfg["audit"]["path"] = "../shared-audit.jsonl"
    ws.config_path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "b.tar"
    rep = create_bundle(load_workspace(ws.config_path), out)
    joined = "\n".join(rep.warnings)
    for key in ("corpus.paths", "student.output_dir", "chat.model", "student.base", "audit.path"):
        assert key in joined
    dest = tmp_path / "laptop"
    install_bundle(out, dest)
    ws2 = load_workspace(dest / "raftsmith.yaml")
    assert ws2.config.corpus.paths == ["docs", "https://example.org/llms.txt"]
    assert ws2.config.chat.model == "tuned" and ws2.config.student.base is None
    assert outside_paths(ws2.config, dest) == []
    for p in (ws2.index_dir, ws2.audit_path, ws2.export_dir, ws2.path(ws2.config.student.output_dir)):
        assert p.resolve().is_relative_to(dest.resolve())


@pytest.mark.parametrize(
    ("key", "value"),
    [("corpus.paths", ["/etc"]), ("chat.model", "/home/x/evil.gguf"), ("student.output_dir", "../../out"),
     ("embedding.model", "~/.cache/model"), ("audit.path", "/var/log/x.jsonl")],
)
def test_crafted_bundle_config_pointing_outside_is_refused(bundle: Path, tmp_path: Path,  # noqa: F811
                                                            key: str, value: object) -> None:
    with tarfile.open(bundle) as tf:
        cfg = yaml.safe_load(tf.extractfile("raftsmith.yaml"))  # type: ignore[arg-type]
    section, field = key.split(".")
    cfg[section][field] = value
    evil = tmp_path / "evil.tar"
    _rebuild(bundle, evil, {"raftsmith.yaml": yaml.safe_dump(cfg).encode()})
    area = tmp_path / "area"
    area.mkdir()
    before = _tree(tmp_path)
    with pytest.raises(IntegrityError, match=key.replace(".", r"\.")):
        install_bundle(evil, area / "dest")
    assert list(area.iterdir()) == []
    assert _tree(tmp_path) == before


# --------------------------------------------------------------------------- killed installs


def test_killed_install_leaves_a_folder_the_next_install_removes(ws: Workspace, tmp_path: Path) -> None:  # noqa: F811
    big = ws.export_dir / "kestrel-smollm2" / "model-q4_k_m.gguf"
    data = os.urandom(64 << 20)  # long enough to kill the install half-way
    big.write_bytes(data)
    manifest_path = ws.export_dir / "kestrel-smollm2" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for e in manifest["files"]:
        if e["path"] == big.name:
            e["size"], e["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    manifest_path.write_text(json.dumps(manifest))
    del data
    out = tmp_path / "b.tar"
    create_bundle(ws, out)
    laptop = tmp_path / "laptop"
    laptop.mkdir()
    code = ("import sys; from rag.bundle import install_bundle; install_bundle(sys.argv[1], sys.argv[2])")
    child = subprocess.Popen([sys.executable, "-c", code, str(out), str(laptop / "kestrel")],
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        partial = [p for p in laptop.glob(".kestrel.installing-*") if (p / "gguf").exists()]
        if partial:
            break
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    stale = list(laptop.glob(".kestrel.installing-*"))
    assert len(stale) == 1 and not (laptop / "kestrel").exists(), "the child finished before it was killed"
    # a look-alike that is not ours, and one an install is using right now: both stay
    foreign = laptop / ".kestrel.installing-foreign"
    foreign.mkdir()
    busy = laptop / ".kestrel.installing-busy"
    busy.mkdir()
    held = open(busy / ".raftsmith-installing", "w")  # noqa: SIM115 - held across the install
    fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        rep = install_bundle(out, laptop / "kestrel")
    finally:
        held.close()
    assert not stale[0].exists()
    assert any(stale[0].name in w for w in rep.warnings)
    assert foreign.is_dir() and busy.is_dir()
    assert sorted(p.name for p in laptop.iterdir()) == sorted(["kestrel", foreign.name, busy.name])
    assert (laptop / "kestrel" / "gguf" / "kestrel-smollm2" / big.name).stat().st_size == 64 << 20
    assert not (laptop / "kestrel" / ".raftsmith-installing").exists()  # the lock marker does not stay behind
