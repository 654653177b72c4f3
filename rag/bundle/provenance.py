"""Who made a bundle: its digest, and an optional HMAC signature with a keyring key.

The manifest's seal is an unkeyed self-hash: it proves a bundle is whole, not who made it
(anyone can build a self-consistent bundle). Two ways to tie a bundle to its maker:

* the **digest** (sha256 of the bundle file) that ``bundle create`` prints, compared on the
  laptop with ``--expect-digest`` (the user carries it over a channel they trust);
* an **HMAC-SHA256 signature** with a key both machines hold in their keyring
  (``bundle create --sign NAME``), written beside the bundle as ``<bundle>.sig`` and checked
  with ``--check-signature NAME``. A shared key proves "made by someone holding this key",
  not by one person; whoever holds it can sign.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from rag.errors import ConfigError, IntegrityError
from rag.fsutil import atomic_write

SIG_FORMAT = "raftsmith-bundle-sig/1"
SIG_SUFFIX = ".sig"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def signature_path(bundle: Path) -> Path:
    return bundle.with_name(bundle.name + SIG_SUFFIX)


def normalize_digest(text: str) -> str:
    """'sha256:ABC...' or 'abc...' -> 'abc...'; a malformed digest is a ConfigError."""
    value = text.strip().lower().removeprefix("sha256:")
    if not _HEX64.match(value):
        raise ConfigError(
            f"--expect-digest {text!r} is not a sha256 digest; pass the 64 hex digits "
            "'raftsmith bundle create' printed (with or without 'sha256:')."
        )
    return value


def check_digest(actual: str, expected: str | None) -> None:
    if expected is None:
        return
    if not hmac.compare_digest(actual, normalize_digest(expected)):
        raise IntegrityError(
            f"the bundle's sha256 is {actual}, not the expected {normalize_digest(expected)}: it is not the "
            "file that was created (or the digest was copied wrong); nothing was installed. Get the bundle "
            "again, or compare the digest 'bundle create' printed."
        )


def signing_key(name: str) -> bytes:
    from rag.errors import KeyringUnavailable
    from rag.secrets import get_key

    try:
        value = get_key(name, env_var="RAFTSMITH_BUNDLE_SIGN_KEY", required=False)
    except KeyringUnavailable as err:
        raise ConfigError(f"The bundle signing key '{name}' cannot be read: {err}") from None
    if not value:
        raise ConfigError(
            f"No bundle signing key '{name}' in the keyring; store the same long random value on both "
            f"machines with 'raftsmith keys set {name}' (or set RAFTSMITH_BUNDLE_SIGN_KEY)."
        )
    if len(value) < 16:
        raise ConfigError(f"The bundle signing key '{name}' is shorter than 16 characters; store a long random one.")
    return value.encode("utf-8")


def _mac(key: bytes, digest: str) -> str:
    return hmac.new(key, f"{SIG_FORMAT}\n{digest}\n".encode("ascii"), hashlib.sha256).hexdigest()


def sign_bundle(bundle: Path, digest: str, key_name: str) -> Path:
    """Write ``<bundle>.sig``: the digest and its HMAC under the keyring key ``key_name``."""
    sig = {"format": SIG_FORMAT, "bundle": bundle.name, "sha256": digest, "key_name": key_name,
           "hmac_sha256": _mac(signing_key(key_name), digest)}
    path = signature_path(bundle)
    atomic_write(path, json.dumps(sig, indent=1, sort_keys=True) + "\n")
    return path


@dataclass(frozen=True)
class SignatureCheck:
    key_name: str
    path: str


def check_signature(bundle: Path | None, digest: str, key_name: str | None,
                    sig_path: str | os.PathLike[str] | None = None) -> SignatureCheck | None:
    """Raise IntegrityError unless ``<bundle>.sig`` holds a valid HMAC of ``digest`` under ``key_name``."""
    if key_name is None:
        return None
    path = Path(sig_path) if sig_path else (signature_path(bundle) if bundle else None)
    if path is None:
        raise IntegrityError(f"--check-signature {key_name}: a stream has no .sig beside it; pass --signature PATH.")
    if not path.is_file():
        raise IntegrityError(
            f"--check-signature {key_name}: no signature file {path} beside the bundle; copy the .sig "
            "'bundle create --sign' wrote, or pass --signature PATH. Nothing was installed."
        )
    try:
        sig = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        raise IntegrityError(f"the signature file {path} is not valid JSON; copy it again.") from None
    if not isinstance(sig, dict) or sig.get("format") != SIG_FORMAT or not isinstance(sig.get("hmac_sha256"), str):
        raise IntegrityError(f"the signature file {path} is not a {SIG_FORMAT} file; copy it again.")
    if not hmac.compare_digest(str(sig.get("sha256", "")), digest):
        raise IntegrityError(
            f"the signature file {path} is for another bundle (its sha256 differs); nothing was installed."
        )
    if not hmac.compare_digest(sig["hmac_sha256"], _mac(signing_key(key_name), digest)):
        raise IntegrityError(
            f"the bundle's signature does not verify under the key '{key_name}': it was signed with another "
            "key, or the bundle or its .sig was altered; nothing was installed."
        )
    return SignatureCheck(key_name, str(path))
