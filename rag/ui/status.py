"""What the Status view shows: the installed bundle, the export and its checksums, the index, the audit log.

Every value comes from files inside the workspace; nothing here writes. Checksums are
computed once per (file, size, mtime) by :func:`rag.fsutil.file_digest`, so reopening the
view does not re-read a GGUF of several GB.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rag.audit import load_hmac_key, verify
from rag.config import Workspace
from rag.errors import RaftsmithError
from rag.exports import newest_export
from rag.fsutil import file_digest

__all__ = ["FileCheck", "Status", "workspace_status"]

BUNDLE_MANIFEST = "bundle-manifest.json"  # written into the state dir by 'raftsmith bundle install'
CHECKED_ROLES = ("merged", "base", "adapter")


@dataclass
class FileCheck:
    path: str
    role: str
    expected: str | None
    verified: bool | None  # None: the manifest gives no sha256 to check against
    problem: str | None = None


@dataclass
class Status:
    workspace: str
    bundle: dict[str, Any] | None
    export: dict[str, Any] | None
    files: list[FileCheck] = field(default_factory=list)
    index: dict[str, Any] = field(default_factory=dict)
    audit: dict[str, Any] = field(default_factory=dict)

    @property
    def all_verified(self) -> bool:
        return bool(self.files) and all(f.verified for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["all_verified"] = self.all_verified
        return d


def _bundle(ws: Workspace) -> dict[str, Any] | None:
    p = ws.state_dir / BUNDLE_MANIFEST
    if not p.is_file():
        return None
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"problem": f"{p.name} is unreadable; reinstall the bundle with 'raftsmith bundle install'"}
    if not isinstance(raw, dict):
        return {"problem": f"{p.name} is not a JSON object"}
    return {"export_name": raw.get("export_name"), "created_at": raw.get("created_at"),
            "raftsmith_version": raw.get("raftsmith_version"), "members": len(raw.get("files") or raw.get("entries") or [])}


def _check_file(export_dir: Path, entry: dict[str, Any]) -> FileCheck:
    rel = str(entry.get("path") or "")
    want = entry.get("sha256")
    check = FileCheck(rel, str(entry.get("role")), str(want) if want else None, None)
    target = (export_dir / rel)
    if not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
        check.verified, check.problem = False, "the manifest names a path outside the export folder"
        return check
    if not target.is_file():
        check.verified, check.problem = False, "missing"
        return check
    if not want:
        return check
    check.verified = file_digest(target) == f"sha256:{str(want).removeprefix('sha256:')}"
    if not check.verified:
        check.problem = "sha256 differs from the export manifest: the file was changed or damaged"
    return check


def _index(ws: Workspace) -> dict[str, Any]:
    from rag.index.store import IndexStore

    try:
        store = IndexStore(ws.index_dir, readonly=True)
    except RaftsmithError as err:
        return {"ok": False, "problem": str(err)}
    try:
        chunks, documents = store.count_chunks(), len(store.sources())
    finally:
        store.close()
    size = sum(f.stat().st_size for f in ws.index_dir.rglob("*") if f.is_file())
    return {"ok": True, "chunks": chunks, "documents": documents, "bytes": size}


def _audit(ws: Workspace) -> dict[str, Any]:
    try:
        res = verify(ws.audit_path, load_hmac_key(ws.config.audit.hmac_key_name))
    except RaftsmithError as err:
        return {"ok": False, "records": 0, "summary": str(err)}
    return {"ok": res.ok, "records": res.records, "bad_line": res.bad_line, "reason": res.reason,
            "summary": str(res)}


def workspace_status(ws: Workspace) -> Status:
    """Everything the Status view shows, read from the workspace."""
    export = newest_export(ws)
    st = Status(workspace=str(ws.root), bundle=_bundle(ws), export=None, index=_index(ws), audit=_audit(ws))
    if export is not None:
        m = export.manifest
        st.export = {"name": export.name, "family": m.get("family"), "created_at": m.get("created_at"),
                     "base_model": (m.get("base_model") or {}).get("id"),
                     "manifest": str(export.dir.relative_to(ws.root) / "manifest.json")
                     if export.dir.is_relative_to(ws.root) else str(export.dir / "manifest.json")}
        st.files = [_check_file(export.dir, e) for e in m.get("files", []) if e.get("role") in CHECKED_ROLES]
    return st
