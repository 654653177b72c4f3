"""What bundle create, verify and install report (``--json`` prints these dicts)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class BundleReport:
    path: str
    members: int
    total_bytes: int  # payload bytes (sum of member sizes)
    bundle_bytes: int  # size of the tar on disk
    seconds: float
    export_name: str | None
    embedding_included: bool
    warnings: list[str] = field(default_factory=list)
    sha256: str = ""  # of the bundle file: compare it on the laptop (--expect-digest)
    signature: str | None = None  # path of the .sig written by --sign

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class VerifyReport:
    path: str
    members: int
    total_bytes: int
    seconds: float
    export_name: str | None
    created_at: str
    raftsmith_version: str
    embedding_included: bool
    sha256: str = ""
    signed_by: str | None = None  # the key name a checked signature verified under

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class InstallReport:
    dest: str
    config_path: str
    members: int
    total_bytes: int
    seconds: float
    export_name: str | None
    embedding_included: bool
    registered: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    sha256: str = ""
    signed_by: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
