"""Member names and types, checked by bundle create, verify and install.

A bundle may hold only regular files (and directories) under a few known top-level names,
with plain relative POSIX paths; anything that could escape the destination or alias
another member is refused.
"""

from __future__ import annotations

import re
import tarfile

from rag.errors import IntegrityError

BUNDLE_FORMAT = "raftsmith-bundle/1"
MANIFEST_NAME = "manifest.json"
CONFIG_MEMBER = "raftsmith.yaml"
# Top-level names a bundle may hold (besides the manifest).
TOP_LEVEL = ("export", "index", "embedding", "rerank", "domain_questions", CONFIG_MEMBER)
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
SAFE_EXPORT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


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
