"""Bundle integrity: corruption, crafted tars and the filesystem around the destination.

Every crafted tar is built with ``tarfile`` directly. Where a malicious bundle could be made
self-consistent (its manifest listing the evil member with the right hash), both variants are
tried: the bundle format gives an attacker no way around the name and type checks.
The last test installs a bundle built from a real ingest (real MiniLM, FAISS, SQLite) and runs
``raftsmith search`` in the installed workspace.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from rag.bundle import create_bundle, install_bundle, seal_manifest, verify_bundle
from rag.cli.main import cli
from rag.config import Workspace, init_workspace, load_workspace
from rag.errors import IntegrityError

pytestmark = pytest.mark.integration

Member = tuple[tarfile.TarInfo, bytes | None]


def _small_workspace(root: Path) -> Workspace:
    """A few hundred KB: export with random "GGUFs", index files, tiny embedding folder."""
    ws = init_workspace(root, corpus_name="kestrel")
    rnd = random.Random(7)
    (ws.root / "domain_questions" / "kestrel.yaml").write_text("- question: What port?\n  answer: 8443\n")
    ws.index_dir.mkdir(parents=True, exist_ok=True)
    (ws.index_dir / "index.faiss").write_bytes(rnd.randbytes(30_000))
    (ws.index_dir / "meta.json").write_text('{"generation": 1}')
    ex = ws.export_dir / "kestrel-smollm2"
    ex.mkdir(parents=True)
    files = []
    for name, role, n in [("model-q4_k_m.gguf", "merged", 150_000), ("adapter.gguf", "adapter", 20_000)]:
        data = rnd.randbytes(n)
        (ex / name).write_bytes(data)
        files.append({"path": name, "role": role, "sha256": hashlib.sha256(data).hexdigest(), "size": n})
    (ex / "Modelfile").write_text("FROM ./model-q4_k_m.gguf\n")
    (ex / "manifest.json").write_text(json.dumps({"format": "raftsmith-export/1", "name": "kestrel-smollm2",
                                                  "created_at": "2026-11-20T00:00:00Z", "files": files}))
    emb = ws.root / "emb"
    emb.mkdir()
    (emb / "modules.json").write_text("[]")
    (emb / "model.safetensors").write_bytes(rnd.randbytes(40_000))
    cfg = yaml.safe_load(ws.config_path.read_text())
    cfg["embedding"]["model"] = str(emb)
    ws.config_path.write_text(yaml.safe_dump(cfg))
    return load_workspace(ws.config_path)


@pytest.fixture
def good(tmp_path: Path) -> bytes:
    ws = _small_workspace(tmp_path / "src")
    out = tmp_path / "good.tar"
    create_bundle(ws, out)
    data = out.read_bytes()
    shutil.rmtree(tmp_path / "src")
    out.unlink()
    return data


def _members(data: bytes) -> list[Member]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return [(m, tf.extractfile(m).read() if m.isreg() else None) for m in tf.getmembers()]  # type: ignore[union-attr]


def _pack(members: list[Member]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for info, payload in members:
            info = _copy(info)
            if payload is not None:
                info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return buf.getvalue()


def _copy(info: tarfile.TarInfo, **changes: object) -> tarfile.TarInfo:
    new = tarfile.TarInfo(str(changes.get("name", info.name)))
    for attr in ("size", "mtime", "mode", "type", "linkname", "uid", "gid", "uname", "gname", "devmajor", "devminor"):
        setattr(new, attr, changes.get(attr, getattr(info, attr)))
    return new


def _reseal(members: list[Member], edit: Callable[[dict], None]) -> list[Member]:
    """Rewrite the manifest consistently (as an attacker could), after ``edit``."""
    info, raw = members[0]
    body = json.loads(raw)  # type: ignore[arg-type]
    body.pop("manifest_sha256")
    edit(body)
    sealed = seal_manifest(body)
    return [(_copy(info, size=len(sealed)), sealed), *members[1:]]


def _entry(name: str, payload: bytes) -> dict:
    return {"path": name, "size": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}


def _tree(root: Path) -> dict[str, tuple[int, int] | str]:
    """Every path under root with file size + mtime (folder mtimes move with the temp sibling)."""
    return {
        str(p.relative_to(root)): "dir" if p.is_dir() else (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


def _assert_rejected(data: bytes, tmp_path: Path, match: str | None = None) -> None:
    """verify refuses it, and install writes nothing anywhere (dest absent, parent unchanged)."""
    with pytest.raises(IntegrityError, match=match):
        verify_bundle(io.BytesIO(data))
    area = tmp_path / "area"
    area.mkdir(exist_ok=True)
    (area / "sentinel.txt").write_text("x")
    bundle = tmp_path / "bad.tar"
    bundle.write_bytes(data)
    before, before_tmp = _tree(area), _tree(tmp_path)
    with pytest.raises(IntegrityError, match=match):
        install_bundle(bundle, area / "dest")
    assert _tree(area) == before
    assert _tree(tmp_path) == before_tmp
    assert not (tmp_path / "x").exists() and not Path("/tmp/x-raftsmith-evil").exists()


def test_good_bundle_verifies(good: bytes) -> None:
    assert verify_bundle(io.BytesIO(good)).members == len(_members(good)) - 1
    assert 200_000 < len(good) < 600_000


def test_thousand_random_byte_flips_rejected(good: bytes) -> None:
    with tarfile.open(fileobj=io.BytesIO(good)) as tf:
        regions = [(m.name, m.offset_data, m.size) for m in tf.getmembers() if m.size > 0]
    rnd = random.Random(1234)
    buf = bytearray(good)
    hit: set[str] = set()
    for _ in range(1000):
        name, start, size = rnd.choice(regions)  # every member, small ones included
        pos = start + rnd.randrange(size)
        old = buf[pos]
        buf[pos] = old ^ rnd.randrange(1, 256)
        with pytest.raises(IntegrityError):
            verify_bundle(io.BytesIO(buf))
        buf[pos] = old
        hit.add(name)
    assert bytes(buf) == good
    assert "manifest.json" in hit and len(hit) == len(regions)


def test_flips_rejected_by_install_too(good: bytes, tmp_path: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(good)) as tf:
        regions = [(m.offset_data, m.size) for m in tf.getmembers() if m.size > 0]
    rnd = random.Random(99)
    for _ in range(10):
        start, size = rnd.choice(regions)
        buf = bytearray(good)
        buf[start + rnd.randrange(size)] ^= 0x01
        _assert_rejected(bytes(buf), tmp_path)


def test_missing_member_rejected(good: bytes, tmp_path: Path) -> None:
    ms = _members(good)
    gone = [m for m in ms if m[0].name != "index/meta.json"]
    _assert_rejected(_pack(gone), tmp_path, match="index/meta.json.*missing")


def test_truncated_bundle_rejected(good: bytes, tmp_path: Path) -> None:
    _assert_rejected(good[: len(good) // 2], tmp_path)
    _assert_rejected(good[:700], tmp_path)


def test_extra_member_rejected(good: bytes, tmp_path: Path) -> None:
    ms = _members(good)
    extra = (tarfile.TarInfo("index/extra.bin"), b"surprise")
    _assert_rejected(_pack([*ms, extra]), tmp_path, match="extra.bin.*not in the manifest")


def test_renamed_member_rejected(good: bytes, tmp_path: Path) -> None:
    ms = [(_copy(i, name="index/meta2.json") if i.name == "index/meta.json" else i, d) for i, d in _members(good)]
    _assert_rejected(_pack(ms), tmp_path, match="meta2.json")


def test_duplicate_member_rejected(good: bytes, tmp_path: Path) -> None:
    ms = _members(good)
    dup = next(m for m in ms if m[0].name == "raftsmith.yaml")
    _assert_rejected(_pack([*ms, dup]), tmp_path, match="twice")
    # same name differing only in case (would collide on macOS / Windows)
    upper = (_copy(dup[0], name="Raftsmith.yaml"), dup[1])
    ms2 = _reseal(ms, lambda b: b["members"].append(_entry("Raftsmith.yaml", dup[1])))  # type: ignore[arg-type]
    with pytest.raises(IntegrityError):
        verify_bundle(io.BytesIO(_pack([*ms2, upper])))


def test_manifest_not_first_rejected(good: bytes, tmp_path: Path) -> None:
    ms = _members(good)
    _assert_rejected(_pack([*ms[1:], ms[0]]), tmp_path, match="start with manifest.json")


def test_not_a_tar_rejected(tmp_path: Path) -> None:
    _assert_rejected(b"hello" * 1000, tmp_path)


EVIL = {
    "traversal": lambda: (tarfile.TarInfo("../x"), b"evil"),
    "nested traversal": lambda: (tarfile.TarInfo("index/../../x"), b"evil"),
    "absolute": lambda: (tarfile.TarInfo("/tmp/x-raftsmith-evil"), b"evil"),
    "backslash": lambda: (tarfile.TarInfo("index\\..\\..\\x"), b"evil"),
    "symlink": lambda: (_typed("index/link", tarfile.SYMTYPE, linkname="/etc/passwd"), None),
    "relative symlink": lambda: (_typed("index/link", tarfile.SYMTYPE, linkname="../../x"), None),
    "hardlink": lambda: (_typed("index/hard", tarfile.LNKTYPE, linkname="raftsmith.yaml"), None),
    "char device": lambda: (_typed("index/dev", tarfile.CHRTYPE, devmajor=1, devminor=3), None),
    "block device": lambda: (_typed("index/blk", tarfile.BLKTYPE, devmajor=8, devminor=0), None),
    "fifo": lambda: (_typed("index/fifo", tarfile.FIFOTYPE), None),
}
EVIL_MATCH = {"traversal": r"\.\.", "nested traversal": r"\.\.", "absolute": "absolute", "backslash": "backslash",
              "symlink": "symlink", "relative symlink": "symlink", "hardlink": "hardlink", "char device": "device",
              "block device": "device", "fifo": "fifo"}


def _typed(name: str, kind: bytes, **attrs: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    for k, v in attrs.items():
        setattr(info, k, v)
    return info


@pytest.mark.parametrize("kind", list(EVIL))
@pytest.mark.parametrize("position", ["first-after-manifest", "last"])
def test_malicious_member_rejected(good: bytes, tmp_path: Path, kind: str, position: str) -> None:
    ms = _members(good)
    evil = EVIL[kind]()
    crafted = [ms[0], evil, *ms[1:]] if position != "last" else [*ms, evil]
    _assert_rejected(_pack(crafted), tmp_path, match=EVIL_MATCH[kind])


@pytest.mark.parametrize("kind", list(EVIL))
def test_self_consistent_malicious_bundle_rejected(good: bytes, tmp_path: Path, kind: str) -> None:
    """The attacker also lists the evil member in a correctly sealed manifest."""
    ms = _members(good)
    info, payload = EVIL[kind]()
    body = payload if payload is not None else b""
    crafted = _reseal(ms, lambda b: b["members"].append(_entry(info.name, body)))
    _assert_rejected(_pack([*crafted, (info, payload)]), tmp_path)


def test_size_lie_rejected(good: bytes, tmp_path: Path) -> None:
    ms = _members(good)
    # the tar carries more bytes than the (consistently sealed) manifest says
    idx = next(i for i, m in enumerate(ms) if m[0].name == "index/meta.json")
    lied = _reseal(ms, lambda b: [e.update(size=e["size"] - 3) for e in b["members"] if e["path"] == "index/meta.json"])
    _assert_rejected(_pack(lied), tmp_path, match="size lie")
    # a header that claims more data than the archive holds
    info, payload = ms[idx]
    raw = bytearray(_pack(ms))
    with tarfile.open(fileobj=io.BytesIO(bytes(raw))) as tf:
        hdr = tf.getmember("index/meta.json").offset
    raw[hdr + 124 : hdr + 136] = b"%011o\x00" % (10**9)  # size field
    raw[hdr + 148 : hdr + 156] = b" " * 8
    raw[hdr + 148 : hdr + 155] = b"%06o\x00" % sum(raw[hdr : hdr + 512])
    _assert_rejected(bytes(raw), tmp_path)


def test_tarfile_data_filter_sees_every_member(good: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    real = tarfile.data_filter

    def spy(member: tarfile.TarInfo, dest_path: str) -> tarfile.TarInfo | None:
        seen.append(member.name)
        return real(member, dest_path)

    monkeypatch.setattr(tarfile, "data_filter", spy)
    bundle = tmp_path / "good.tar"
    bundle.write_bytes(good)
    install_bundle(bundle, tmp_path / "dest")
    assert sorted(seen) == sorted(m.name for m, _ in _members(good)[1:])


def test_failed_install_leaves_existing_empty_dest(good: bytes, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    with tarfile.open(fileobj=io.BytesIO(good)) as tf:
        last = [m for m in tf.getmembers() if m.size > 0][-1]  # extraction is well under way when it fails
    buf = bytearray(good)
    buf[last.offset_data + last.size - 1] ^= 0xFF
    bundle = tmp_path / "bad.tar"
    bundle.write_bytes(bytes(buf))
    before = _tree(tmp_path)
    with pytest.raises(IntegrityError, match="sha256"):
        install_bundle(bundle, dest)
    assert dest.is_dir() and not any(dest.iterdir())
    assert _tree(tmp_path) == before


# --------------------------------------------------------------------------- real index


def test_installed_bundle_searches_and_answers(sample_workspace: Path, smollm2_gguf: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Home: real ingest (MiniLM, FAISS, SQLite) + an export whose merged GGUF is the real SmolLM2.
    Laptop (the home workspace deleted): `raftsmith search` from another folder, then an answer
    from the tuned model through llama.cpp, and an audit log that verifies."""
    from rag.answer import answer
    from rag.audit import tail, verify
    from rag.fsutil import sha256_file
    from rag.ingest.pipeline import ingest

    cfg = yaml.safe_load((sample_workspace / "raftsmith.yaml").read_text())
    cfg["chat"]["max_tokens"] = 12
    (sample_workspace / "raftsmith.yaml").write_text(yaml.safe_dump(cfg))
    ws = load_workspace(sample_workspace / "raftsmith.yaml")
    # three documents keep the real-MiniLM ingest to seconds; one of them answers the query
    ingest(ws, paths=["docs/key-rotation.md", "docs/networking.md", "docs/overview.md"])
    ex = ws.export_dir / "kestrel-smollm2"
    ex.mkdir(parents=True)
    gguf = ex / "model-q4_1.gguf"
    shutil.copyfile(smollm2_gguf, gguf)
    (ex / "manifest.json").write_text(json.dumps({
        "format": "raftsmith-export/1", "name": "kestrel-smollm2", "family": "smollm2", "chat_format": "chatml",
        "created_at": "2026-11-22T00:00:00Z", "stop": ["<|im_end|>"],
        "files": [{"path": gguf.name, "role": "merged", "quantization": "q4_1",
                   "sha256": sha256_file(gguf), "size": gguf.stat().st_size}],
    }))
    out = tmp_path / "kestrel.tar"
    rep = create_bundle(ws, out)
    assert rep.embedding_included and rep.export_name == "kestrel-smollm2"
    shutil.rmtree(sample_workspace)  # the laptop has no source workspace
    dest = tmp_path / "laptop" / "kestrel"
    install_bundle(out, dest)
    ws2 = load_workspace(dest / "raftsmith.yaml")
    assert ws2.index_dir == dest / "index"
    assert ws2.config.embedding.model == "embedding"
    assert (dest / "embedding" / "model.safetensors").is_file()
    assert ws2.config.chat.backend == "llama-cpp"
    # The installed workspace is self-contained: moving the folder keeps it working.
    moved = tmp_path / "moved" / "kestrel"
    moved.parent.mkdir()
    shutil.move(str(dest), str(moved))
    dest = moved
    ws2 = load_workspace(dest / "raftsmith.yaml")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = CliRunner().invoke(cli, ["search", "How do I rotate the keys?", "-k", "3", "--json",
                                      "--config", str(dest / "raftsmith.yaml")])
    assert result.exit_code == 0, result.output
    hits = json.loads(result.output)
    assert len(hits) == 3 and all(h["chunk_id"] and h["text"] for h in hits)
    assert any("key-rotation" in h["source"] for h in hits), [h["source"] for h in hits]
    assert os.listdir(elsewhere) == []

    got = answer(ws2, "How often are the keys rotated?", model="tuned")
    assert got.backend == "llama-cpp" and "kestrel-smollm2" in got.model
    assert any("key-rotation" in c.source for c in got.retrieved)
    assert verify(ws2.audit_path).ok
    assert tail(ws2.audit_path, 10)[0]["event"] == "bundle_install"
