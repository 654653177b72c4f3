"""Safety checks shared by bundle create, verify and install.

Two jobs, kept apart from the tar plumbing in :mod:`rag.bundle`:

* member names and types: a bundle may hold only regular files (and directories) under a
  few known top-level names, with plain relative POSIX paths; anything that could escape
  the destination or alias another member is refused;
* secrets: text that looks like an API key, a private key or a value currently held in the
  environment/keyring never enters a bundle. Findings name the file and the kind of
  secret, never the secret itself.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rag.errors import IntegrityError

BUNDLE_FORMAT = "raftsmith-bundle/1"
MANIFEST_NAME = "manifest.json"
CONFIG_MEMBER = "raftsmith.yaml"
# Top-level names a bundle may hold (besides the manifest).
TOP_LEVEL = ("export", "index", "embedding", "domain_questions", CONFIG_MEMBER)
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
SAFE_EXPORT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


# --------------------------------------------------------------------------- member names


def check_member_name(name: str) -> None:
    """Raise IntegrityError unless ``name`` is a plain, normalized, relative POSIX path."""
    if not isinstance(name, str) or not name:
        raise IntegrityError("bundle member with an empty name; the bundle is damaged or crafted")
    shown = ascii(name)
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise IntegrityError(f"bundle member {shown} has an absolute path; refusing the bundle")
    if "\\" in name:
        raise IntegrityError(f"bundle member {shown} contains a backslash; refusing the bundle")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise IntegrityError(f"bundle member {shown} contains control characters; refusing the bundle")
    parts = name.rstrip("/").split("/")
    if ".." in parts:
        raise IntegrityError(f"bundle member {shown} climbs out with '..'; refusing the bundle")
    if any(p in ("", ".") for p in parts):
        raise IntegrityError(f"bundle member {shown} is not a normalized path; refusing the bundle")
    if parts[0] != MANIFEST_NAME and parts[0] not in TOP_LEVEL:
        raise IntegrityError(
            f"bundle member {shown} is outside the bundle layout ({', '.join(TOP_LEVEL)}); refusing the bundle"
        )


def check_member_type(member: tarfile.TarInfo) -> None:
    """Only regular files and directories; links, devices, fifos and sparse files are refused."""
    shown = ascii(member.name)
    if member.issym():
        raise IntegrityError(f"bundle member {shown} is a symlink; refusing the bundle")
    if member.islnk():
        raise IntegrityError(f"bundle member {shown} is a hardlink; refusing the bundle")
    if member.ischr() or member.isblk():
        raise IntegrityError(f"bundle member {shown} is a device file; refusing the bundle")
    if member.isfifo():
        raise IntegrityError(f"bundle member {shown} is a fifo; refusing the bundle")
    if member.issparse():
        raise IntegrityError(f"bundle member {shown} is a sparse file; refusing the bundle")
    if not (member.isreg() or member.isdir()):
        raise IntegrityError(f"bundle member {shown} has unsupported type {member.type!r}; refusing the bundle")


def fold_key(name: str) -> str:
    """Key under which two names collide on a case-insensitive file system."""
    return name.rstrip("/").casefold()


# --------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class ManifestEntry:
    path: str
    size: int
    sha256: str


@dataclass
class BundleManifest:
    format: str
    created_at: str
    raftsmith_version: str
    export_name: str | None
    embedding_included: bool
    entries: dict[str, ManifestEntry]
    raw: dict[str, Any]


def parse_manifest(data: bytes) -> BundleManifest:
    """Validate the bundle manifest's shape; every listed path must itself be safe."""
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise IntegrityError("the bundle manifest is not valid JSON; the bundle is damaged") from None
    if not isinstance(obj, dict) or obj.get("format") != BUNDLE_FORMAT:
        found = obj.get("format") if isinstance(obj, dict) else None
        raise IntegrityError(
            f"the bundle manifest has format {found!r}, expected {BUNDLE_FORMAT!r}; "
            "create the bundle with this raftsmith version"
        )
    members = obj.get("members")
    if not isinstance(members, list):
        raise IntegrityError("the bundle manifest has no 'members' list; the bundle is damaged")
    entries: dict[str, ManifestEntry] = {}
    folded: set[str] = set()
    for item in members:
        if not isinstance(item, dict):
            raise IntegrityError("the bundle manifest has a malformed member entry")
        path, size, sha = item.get("path"), item.get("size"), item.get("sha256")
        if not isinstance(path, str):
            raise IntegrityError("the bundle manifest has a member without a path")
        check_member_name(path)
        if path == MANIFEST_NAME:
            raise IntegrityError("the bundle manifest lists itself; the bundle is damaged")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise IntegrityError(f"the bundle manifest gives {ascii(path)} an invalid size")
        if not isinstance(sha, str) or not _HEX64.match(sha):
            raise IntegrityError(f"the bundle manifest gives {ascii(path)} an invalid sha256")
        if path in entries or fold_key(path) in folded:
            raise IntegrityError(f"the bundle manifest lists {ascii(path)} twice")
        entries[path] = ManifestEntry(path, size, sha)
        folded.add(fold_key(path))
    export_name = obj.get("export_name")
    if export_name is not None and (not isinstance(export_name, str) or not SAFE_EXPORT_NAME.match(export_name)):
        raise IntegrityError(f"the bundle manifest has an unsafe export name {ascii(export_name)}")
    for path in entries:  # a file cannot also be a parent folder of another file
        parent = path.rsplit("/", 1)[0] if "/" in path else None
        while parent:
            if parent in entries:
                raise IntegrityError(f"the bundle manifest lists {ascii(parent)} as both file and folder")
            parent = parent.rsplit("/", 1)[0] if "/" in parent else None
    return BundleManifest(
        format=obj["format"],
        created_at=str(obj.get("created_at", "")),
        raftsmith_version=str(obj.get("raftsmith_version", "")),
        export_name=export_name,
        embedding_included=bool(obj.get("embedding_included", False)),
        entries=entries,
        raw=obj,
    )


# --------------------------------------------------------------------------- secrets

TEXT_SUFFIXES = {".yaml", ".yml", ".json", ".jsonl", ".md", ".txt", ".toml", ".cfg", ".ini", ".env", ".tmpl"}
MAX_SCAN_BYTES = 32 * 1024 * 1024

_ASSIGNMENT = re.compile(
    r"""["']?\b(api[_-]?key|secret[_-]?key|client[_-]?secret|access[_-]?token|auth[_-]?token|password|passwd)\b["']?"""
    r"""\s*[:=]\s*["']?([^\s"',}\]#]*)""",
    re.IGNORECASE,
)
_EMPTY_VALUES = {"", "null", "none", "~", "''", '""', "<redacted>", "redacted", "false"}
SECRET_ENV_VARS = ("OPENROUTER_API_KEY", "OPENAI_API_KEY")


def live_secret_values(extra_key_names: list[str] | None = None) -> list[str]:
    """Secrets this machine holds now (env vars, raftsmith's keyring entries); never logged.

    Read through rag.secrets, whose keyring calls time out instead of hanging on a headless
    machine; an unusable keyring is skipped (the shape checks still run).
    """
    from rag.errors import KeyringUnavailable
    from rag.secrets import ENV_VARS, KNOWN_NAMES, keyring_get

    env_names = set(SECRET_ENV_VARS) | {v for v in ENV_VARS.values() if v}
    values = [os.environ.get(v, "") for v in sorted(env_names)]
    for name in dict.fromkeys([*KNOWN_NAMES, *(n for n in (extra_key_names or []) if n)]):
        try:
            values.append(keyring_get(name) or "")
        except KeyringUnavailable:
            break  # the keyring does not answer; asking again for each name would only wait longer
        except Exception:  # noqa: BLE001 - a broken keyring backend must not block bundling
            continue
    # Very short values would match by accident everywhere; real keys are long.
    return sorted({v for v in values if len(v) >= 8})


def find_secret(text: str, live: list[str], assignments: bool = True) -> str | None:
    """Describe the first secret-looking thing in ``text`` (never the value), or None."""
    for value in live:
        if value in text:
            return "an API key currently stored in this machine's environment or keyring"
    from rag.secrets import KEY_SHAPES

    for label, pattern in KEY_SHAPES:
        if pattern.search(text):
            return label
    if assignments:
        for m in _ASSIGNMENT.finditer(text):
            if m.group(2).strip().lower() not in _EMPTY_VALUES:
                return f"a non-empty '{m.group(1)}' value"
    return None


def is_text_member(path: str | Path) -> bool:
    p = Path(path)
    return p.suffix.lower() in TEXT_SUFFIXES or p.name in ("Modelfile", "Modelfile.adapter") or p.name.startswith("Modelfile")


def scan_file_for_secrets(src: Path, shown_name: str, live: list[str], assignments: bool = True) -> None:
    """Raise IntegrityError naming ``shown_name`` if the file holds a secret-looking string."""
    if src.stat().st_size > MAX_SCAN_BYTES:
        return
    text = src.read_bytes().decode("utf-8", errors="replace")
    scan_text_for_secrets(text, shown_name, live, assignments)


def scan_text_for_secrets(text: str, shown_name: str, live: list[str], assignments: bool = True) -> None:
    found = find_secret(text, live, assignments)
    if found is not None:
        raise IntegrityError(
            f"refusing to bundle: {shown_name} contains {found}. Remove it from that file "
            "(keep API keys in the keyring: 'raftsmith keys set PROVIDER') and run bundle create again."
        )
