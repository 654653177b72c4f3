"""The bundle manifest: its shape, and the seal that makes any changed byte show.

``manifest.json`` is a bundle's first member. It lists every other member with its size and
sha256, and starts with its own sha256 over its raw bytes (see :func:`seal_manifest`).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from rag.bundle.members import (
    BUNDLE_FORMAT,
    MANIFEST_NAME,
    SAFE_EXPORT_NAME,
    check_member_name,
    fold_key,
)
from rag.errors import IntegrityError

SEAL_PREFIX = b'{"manifest_sha256": "'
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


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



def seal_manifest(body: dict[str, Any]) -> bytes:
    """Serialize with a leading self-hash over the raw bytes (hash field zeroed).

    Hashing the raw bytes, not a re-serialization, means any changed byte of manifest.json
    (whitespace included) is caught, and the hash sits at a fixed offset.
    """
    rest = json.dumps(body, indent=1, sort_keys=True, ensure_ascii=True)
    raw = SEAL_PREFIX + b"0" * 64 + b'",' + rest[1:].encode("ascii")
    digest = hashlib.sha256(raw).hexdigest().encode("ascii")
    return raw[: len(SEAL_PREFIX)] + digest + raw[len(SEAL_PREFIX) + 64 :]


def unseal_manifest(raw: bytes) -> BundleManifest:
    n = len(SEAL_PREFIX)
    if not raw.startswith(SEAL_PREFIX) or len(raw) < n + 66:
        raise IntegrityError("the bundle manifest is damaged (no seal); the bundle cannot be trusted")
    claimed = raw[n : n + 64]
    zeroed = raw[:n] + b"0" * 64 + raw[n + 64 :]
    if hashlib.sha256(zeroed).hexdigest().encode("ascii") != claimed:
        raise IntegrityError("manifest.json does not match its own checksum; the bundle is damaged")
    return parse_manifest(raw)
