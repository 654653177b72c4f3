"""Provenance: the digest printed at create, --expect-digest, and HMAC signing with a keyring key.

The seal inside a bundle proves integrity only (anyone can build a self-consistent bundle,
as test_attacker_rebuilt_bundle_fails_the_signature does); the digest and the signature tie
the file to its maker.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_bundle import bundle, make_workspace, ws  # noqa: F401 - shared fixtures

from rag.bundle import create_bundle, install_bundle, seal_manifest, verify_bundle
from rag.cli.main import cli
from rag.config import Workspace
from rag.errors import ConfigError, IntegrityError

SIGN_KEY = "k3y-for-bundles-" + "9f2c" * 8


@pytest.fixture
def keyring_with_key() -> Iterator[object]:
    import keyring
    from keyring_double import MemoryKeyring

    from rag.secrets import set_key

    previous = keyring.get_keyring()
    kr = MemoryKeyring()
    keyring.set_keyring(kr)
    set_key("bundle-sign", SIGN_KEY)
    yield kr
    keyring.set_keyring(previous)


def test_create_reports_the_file_digest(bundle: Path) -> None:  # noqa: F811
    rep = verify_bundle(bundle)
    assert rep.sha256 == hashlib.sha256(bundle.read_bytes()).hexdigest()


def test_cli_create_prints_digest_and_verify_checks_it(ws: Workspace, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "b.tar.gz"
    runner = CliRunner()
    res = runner.invoke(cli, ["bundle", "create", str(out), "--json", "--config", str(ws.config_path)])
    assert res.exit_code == 0, res.output
    digest = json.loads(res.output)["sha256"]
    assert digest == hashlib.sha256(out.read_bytes()).hexdigest()
    res = runner.invoke(cli, ["bundle", "create", str(tmp_path / "c.tar"), "--config", str(ws.config_path)])
    assert res.exit_code == 0 and "--expect-digest sha256:" in res.output and "integrity, not origin" in res.output
    ok = runner.invoke(cli, ["bundle", "verify", str(out), "--expect-digest", f"sha256:{digest.upper()}"])
    assert ok.exit_code == 0, ok.output
    bad = runner.invoke(cli, ["bundle", "verify", str(out), "--expect-digest", "0" * 64])
    assert bad.exit_code == 1 and "not the expected" in bad.output
    typo = runner.invoke(cli, ["bundle", "verify", str(out), "--expect-digest", "abc"])
    assert typo.exit_code == 1 and "64 hex digits" in typo.output


def test_install_with_wrong_digest_installs_nothing(bundle: Path, tmp_path: Path) -> None:  # noqa: F811
    area = tmp_path / "laptop"
    area.mkdir()
    with pytest.raises(IntegrityError, match="not the expected"):
        install_bundle(bundle, area / "kestrel", expect_digest="1" * 64)
    assert list(area.iterdir()) == []
    rep = install_bundle(bundle, area / "kestrel", expect_digest=hashlib.sha256(bundle.read_bytes()).hexdigest())
    assert rep.sha256 == hashlib.sha256(bundle.read_bytes()).hexdigest()
    assert (area / "kestrel" / "raftsmith.yaml").is_file()


def test_signed_bundle_verifies_with_the_same_key(ws: Workspace, tmp_path: Path,  # noqa: F811
                                                  keyring_with_key: object) -> None:
    out = tmp_path / "b.tar"
    rep = create_bundle(ws, out, sign="bundle-sign")
    sig = Path(str(rep.signature))
    assert sig == tmp_path / "b.tar.sig"
    assert SIGN_KEY not in sig.read_text() and SIGN_KEY.encode() not in out.read_bytes()
    assert verify_bundle(out, check_signature="bundle-sign").signed_by == "bundle-sign"
    inst = install_bundle(out, tmp_path / "laptop", check_signature="bundle-sign")
    assert inst.signed_by == "bundle-sign"


def test_signature_under_another_key_fails(ws: Workspace, tmp_path: Path,  # noqa: F811
                                           keyring_with_key: object) -> None:
    from rag.secrets import set_key

    out = tmp_path / "b.tar"
    create_bundle(ws, out, sign="bundle-sign")
    set_key("bundle-sign", "a-different-laptop-key-" + "0" * 20)
    with pytest.raises(IntegrityError, match="does not verify under the key 'bundle-sign'"):
        verify_bundle(out, check_signature="bundle-sign")
    with pytest.raises(IntegrityError, match="does not verify"):
        install_bundle(out, tmp_path / "laptop", check_signature="bundle-sign")
    assert not (tmp_path / "laptop").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".laptop")]


def test_attacker_rebuilt_bundle_fails_the_signature(ws: Workspace, tmp_path: Path,  # noqa: F811
                                                     keyring_with_key: object) -> None:
    """A self-consistent bundle with an edited member verifies (integrity) but not its origin."""
    out = tmp_path / "b.tar"
    create_bundle(ws, out, sign="bundle-sign")
    with tarfile.open(out) as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf.getmembers()]  # type: ignore[union-attr]
    evil = b"- question: What port?\n  answer: 31337\n"
    body = json.loads(members[0][1])
    body.pop("manifest_sha256")
    for e in body["members"]:
        if e["path"] == "domain_questions/kestrel.yaml":
            e["size"], e["sha256"] = len(evil), hashlib.sha256(evil).hexdigest()
    rebuilt = io.BytesIO()
    with tarfile.open(fileobj=rebuilt, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for info, payload in members:
            if info.name == "manifest.json":
                payload = seal_manifest(body)
            elif info.name == "domain_questions/kestrel.yaml":
                payload = evil
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
    out.write_bytes(rebuilt.getvalue())
    verify_bundle(out)  # the seal holds: integrity alone cannot tell
    with pytest.raises(IntegrityError, match="for another bundle"):
        verify_bundle(out, check_signature="bundle-sign")
    # a forged .sig naming the new digest still needs the key
    sig = json.loads((tmp_path / "b.tar.sig").read_text())
    sig["sha256"] = hashlib.sha256(out.read_bytes()).hexdigest()
    (tmp_path / "b.tar.sig").write_text(json.dumps(sig))
    with pytest.raises(IntegrityError, match="does not verify"):
        verify_bundle(out, check_signature="bundle-sign")


def test_missing_key_or_signature_file_is_named(ws: Workspace, tmp_path: Path, bundle: Path) -> None:  # noqa: F811
    with pytest.raises(ConfigError, match="raftsmith keys set nope"):
        create_bundle(ws, tmp_path / "b.tar", sign="nope")
    assert not (tmp_path / "b.tar").exists()
    import keyring
    from keyring_double import MemoryKeyring

    from rag.secrets import set_key

    previous = keyring.get_keyring()
    keyring.set_keyring(MemoryKeyring())
    try:
        set_key("bundle-sign", SIGN_KEY)
        with pytest.raises(IntegrityError, match=r"no signature file .*kestrel\.tar\.sig"):
            verify_bundle(bundle, check_signature="bundle-sign")
        res = CliRunner().invoke(cli, ["bundle", "install", str(bundle), "--dest", str(tmp_path / "l"),
                                       "--check-signature", "bundle-sign"])
        assert res.exit_code == 1 and "no signature file" in res.output
        assert not (tmp_path / "l").exists()
    finally:
        keyring.set_keyring(previous)
