"""``bundle create``: pack a workspace's answering half into one tar, hashing as it streams.

The layout is described in :mod:`rag.bundle`. Sources are collected (export, a consistent
index snapshot, the embedding model, the config rewritten for the install, the question
sets), scanned for secrets, then written manifest-first.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import sqlite3
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from rag import __version__
from rag.bundle.manifest import seal_manifest
from rag.bundle.members import (
    BUNDLE_FORMAT,
    CONFIG_MEMBER,
    MANIFEST_NAME,
    SAFE_EXPORT_NAME,
    check_member_name,
)
from rag.bundle.paths import bundle_safe_config
from rag.bundle.provenance import sign_bundle, signing_key
from rag.bundle.reports import BundleReport
from rag.bundle.scan import (
    is_text_member,
    live_secrets,
    scan_file_for_secrets,
    scan_store_for_secrets,
)
from rag.config import Workspace, dump_config
from rag.errors import ConfigError, IndexStoreError, IntegrityError, RaftsmithError
from rag.fsutil import atomic_path, sha256_file
from rag.progress import Progress, counter

_JUNK_SUFFIXES = (".lock", ".tmp", ".temp", ".partial", "-wal", "-shm", "-journal", "~")
_SQLITE_MAGIC = b"SQLite format 3\x00"


# --------------------------------------------------------------------------- small helpers


class _HashingReader:
    """Wraps a binary file: read() feeds sha256 and counts bytes (tarfile pulls from it)."""

    def __init__(self, f: IO[bytes], advance: Callable[[int], None]):
        self._f = f
        self._advance = advance
        self.sha = hashlib.sha256()
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self.sha.update(data)
        self.count += len(data)
        self._advance(len(data))
        return data


def _tarinfo(name: str, size: int, mtime: float) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, int(mtime), 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _is_junk(name: str) -> bool:
    return name.startswith(".") or name.endswith(_JUNK_SUFFIXES) or name == "__pycache__"


# --------------------------------------------------------------------------- create: sources


@dataclass
class _Source:
    arcname: str
    path: Path
    scan: str | None = None  # "full" | "shapes" | "store" (SQLite chunk texts) | None
    expect_sha: str | None = None  # from the export manifest
    expect_size: int | None = None


def _export_sources(ws: Workspace, export_name: str | None) -> tuple[list[_Source], str | None, dict[str, Any] | None]:
    from rag.exports import find_export, newest_export

    export = find_export(ws, export_name) if export_name else newest_export(ws)
    if export is None:
        if export_name:
            raise ConfigError(f"No export named '{export_name}' in {ws.export_dir}; run 'raftsmith export' or fix --export.")
        return [], None, None
    name = export.dir.name
    if not SAFE_EXPORT_NAME.match(name):
        raise ConfigError(f"Export folder name '{name}' is not bundle-safe; use letters, digits, '.', '_' or '-'.")
    sources = [_Source("export/manifest.json", export.dir / "manifest.json", scan="full")]
    for entry in export.manifest.get("files", []):
        rel = str(entry.get("path", ""))
        if entry.get("role") == "hf":
            continue  # the HF folder is for the home machine; the laptop runs GGUF
        arc = f"export/{rel}"
        check_member_name(arc)
        src = export.dir / rel
        if not src.is_file():
            raise IntegrityError(f"{src} is listed in the export manifest but missing; re-run 'raftsmith export'.")
        size = entry.get("size")
        sources.append(_Source(arc, src, scan="full" if is_text_member(rel) else None,
                               expect_sha=entry.get("sha256"), expect_size=size if isinstance(size, int) else None))
    return sources, name, export.manifest


def _index_state(index_dir: Path) -> dict[str, tuple[int, int]]:
    # Readers touch SQLite's -shm and lock files; only real writes count as change.
    return {
        str(p): (p.stat().st_mtime_ns, p.stat().st_size)
        for p in index_dir.rglob("*")
        if p.is_file() and not p.name.endswith(("-shm", ".lock"))
    }


def _snapshot_index(index_dir: Path, staging: Path) -> list[_Source]:
    """Copy the index into ``staging`` consistently: SQLite via its backup API, others by copy.

    If any index file changes while we copy (an ingest is running), try again, then give up.
    """
    from rag.index.store import writer_lock

    # Holding the writer lock keeps 'raftsmith ingest' out while we copy (it fails fast
    # with a clear message if an ingest is running); the change check covers anything else.
    with writer_lock(index_dir):
        return _copy_index(index_dir, staging)


def _copy_index(index_dir: Path, staging: Path) -> list[_Source]:
    for _attempt in range(3):
        before = _index_state(index_dir)
        shutil.rmtree(staging, ignore_errors=True)
        sources: list[_Source] = []
        for p in sorted(index_dir.rglob("*")):
            rel = p.relative_to(index_dir)
            if not p.is_file() or any(_is_junk(part) for part in rel.parts):
                continue
            dst = staging / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            with open(p, "rb") as f:
                is_sqlite = f.read(16) == _SQLITE_MAGIC
            if is_sqlite:
                _sqlite_backup(p, dst)
            else:
                shutil.copyfile(p, dst)
            scan = "store" if is_sqlite else "full" if is_text_member(p) else None
            sources.append(_Source(f"index/{rel.as_posix()}", dst, scan=scan))
        if _index_state(index_dir) == before:
            return sources
        time.sleep(0.5)
    raise IndexStoreError(f"The index in {index_dir} kept changing while it was copied; wait for ingest to finish and retry.")


def _sqlite_backup(src: Path, dst: Path) -> None:
    try:
        source = sqlite3.connect(f"{src.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        source = sqlite3.connect(str(src))
    try:
        target = sqlite3.connect(str(dst))
        try:
            source.backup(target)
            # A self-contained file: no -wal/-shm needed next to it on the laptop.
            target.execute("PRAGMA journal_mode=DELETE")
            target.commit()
            # Deleted chunks linger: FTS5 keeps their terms in old segments until a merge, and
            # free pages keep their text. 'optimize' and VACUUM rewrite the copy without them,
            # so only live rows travel (a document edited to drop a key leaves no trace).
            with contextlib.suppress(sqlite3.OperationalError):  # a store without the FTS table
                target.execute("INSERT INTO chunks_fts(chunks_fts) VALUES('optimize')")
                target.commit()
            target.execute("VACUUM")
        finally:
            target.close()
    except sqlite3.Error as err:
        raise IndexStoreError(f"Could not snapshot the SQLite store {src}: {err}. Check the index with 'raftsmith search'.") from None
    finally:
        source.close()


def _model_folder_sources(root: Path, prefix: str) -> list[_Source]:
    sources = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if not p.is_file() or any(_is_junk(part) for part in rel.parts):
            continue
        # Tokenizer vocabularies hold words like "password"; check key shapes and live keys only.
        sources.append(_Source(f"{prefix}/{rel.as_posix()}", p, scan="shapes" if is_text_member(p) else None))
    return sources


def _embedding_sources(ws: Workspace) -> list[_Source]:
    from rag.index.embedder import resolve_model_dir

    root = resolve_model_dir(ws.config.embedding, ws.root)
    sources = _model_folder_sources(root, "embedding")
    if not sources:
        raise ConfigError(f"The embedding model folder {root} is empty; fix embedding.model.")
    return sources


def _rerank_sources(ws: Workspace, warnings: list[str]) -> list[_Source]:
    """The cross-encoder folder of ``chat.rerank_model`` as ``rerank/`` members: the laptop
    has no hub to fetch it from. Required when ``chat.rerank`` is ``cross-encoder``."""
    from rag.rerank.cross_encoder import resolve_cross_encoder_dir

    name = ws.config.chat.rerank_model
    if not name:
        return []
    try:
        root = resolve_cross_encoder_dir(name, ws.root)
    except RaftsmithError as err:
        if ws.config.chat.rerank == "cross-encoder":
            raise ConfigError(f"chat.rerank is cross-encoder but its model cannot be bundled: {err}") from None
        warnings.append(f"chat.rerank_model {name} was not found, so the bundle holds no reranker ({err})")
        return []
    sources = _model_folder_sources(root, "rerank")
    if not sources:
        raise ConfigError(f"The cross-encoder folder {root} is empty; fix chat.rerank_model.")
    return sources


def _bundle_config_text(ws: Workspace, with_embedding: bool, with_rerank: bool) -> tuple[str, list[str]]:
    """The workspace config with every path pointing at the installed layout, and what was
    rewritten because it pointed outside the workspace (see rag.bundle.paths)."""
    cfg = ws.config.model_copy(deep=True)
    if with_embedding:
        cfg.embedding.model = "embedding"
    if with_rerank:
        cfg.chat.rerank_model = "rerank"
    cfg.index.path = "index"
    cfg.export.out_dir = "gguf"
    cfg.chat.backend = "llama-cpp"
    cfg.chat.base_gguf = None  # home-machine paths do not travel; the export's base GGUF is used
    cfg.raft.questions = ["domain_questions"]
    changed = bundle_safe_config(cfg, ws.root)
    notes = [f"config rewritten for the laptop: {c}" for c in changed]
    if not with_embedding and any(c.startswith("embedding.model") for c in changed):
        notes.append("the bundle holds no embedding model: on the laptop, put the model folder at "
                     "<installed workspace>/embedding (the same model that built the index)")
    header = "# raftsmith workspace installed from a bundle. Paths are relative to this file's folder.\n"
    return header + dump_config(cfg), notes


# --------------------------------------------------------------------------- create


def create_bundle(
    ws: Workspace,
    out_path: str | os.PathLike[str],
    include_embedding_model: bool = True,
    export_name: str | None = None,
    progress: Progress | None = None,
    allow_secrets: Sequence[str] = (),
    sign: str | None = None,
) -> BundleReport:
    """Pack export + index + embedding model + config + questions into ``out_path`` (.tar or .tar.gz).

    ``allow_secrets`` names findings of the secret scan that may travel anyway (a key shape
    id such as ``aws-key``, or the env var / keyring name of a live key). ``sign`` names a
    keyring key: the bundle's digest is HMAC-signed into ``<out>.sig`` (rag.bundle.provenance).
    """
    t0 = time.perf_counter()
    out = Path(out_path).expanduser().absolute()
    compressed = out.name.endswith((".tar.gz", ".tgz"))
    if not (compressed or out.name.endswith(".tar")):
        raise ConfigError(f"Bundle name {out.name} must end in .tar or .tar.gz.")
    if sign is not None:
        signing_key(sign)  # fail before the long part when the key is missing
    out.parent.mkdir(parents=True, exist_ok=True)
    warnings: list[str] = []
    with tempfile.TemporaryDirectory(prefix=".raftsmith-bundle-", dir=out.parent) as tmp:
        staging = Path(tmp)
        sources, name, export_manifest = _export_sources(ws, export_name)
        if name is None:
            warnings.append(f"No export found in {ws.export_dir}: the bundle holds no models. Run 'raftsmith export' first.")
        index_sources = _snapshot_index(ws.index_dir, staging / "index") if ws.index_dir.is_dir() else []
        sources += index_sources
        if not index_sources:
            warnings.append(f"No index in {ws.index_dir}: run 'raftsmith ingest' before bundling to search on the laptop.")
        if include_embedding_model:
            sources += _embedding_sources(ws)
        rerank_sources = _rerank_sources(ws, warnings)
        sources += rerank_sources
        cfg_file = staging / CONFIG_MEMBER
        cfg_text, rewritten = _bundle_config_text(ws, include_embedding_model, bool(rerank_sources))
        warnings += rewritten
        cfg_file.write_text(cfg_text, encoding="utf-8")
        sources.append(_Source(CONFIG_MEMBER, cfg_file, scan="full"))
        qdir = ws.root / "domain_questions"
        for q in sorted([*qdir.glob("*.yaml"), *qdir.glob("*.yml")]) if qdir.is_dir() else []:
            sources.append(_Source(f"domain_questions/{q.name}", q, scan="full"))

        _scan_sources(ws, sources, frozenset(allow_secrets))
        for s in sources:
            check_member_name(s.arcname)
        body: dict[str, Any] = {
            "format": BUNDLE_FORMAT,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "raftsmith_version": __version__,
            "export_name": name,
            "export": _export_summary(export_manifest),
            "embedding_included": include_embedding_model,
            "embedding_model": ws.config.embedding.model,
            "rerank_included": bool(rerank_sources),
        }
        with atomic_path(out) as tmp_out:
            total = _write_tar(tmp_out, sources, body, compressed, progress)
    digest = sha256_file(out)  # one more read: a plain tar's manifest is patched in place at the end
    sig_path = str(sign_bundle(out, digest, sign)) if sign is not None else None
    return BundleReport(str(out), len(sources), total, out.stat().st_size, round(time.perf_counter() - t0, 3),
                        name, include_embedding_model, warnings, sha256=digest, signature=sig_path)


def _export_summary(manifest: dict[str, Any] | None) -> dict[str, Any] | None:
    if manifest is None:
        return None
    keys = ("name", "family", "chat_format", "created_at", "base_model", "final_loss")
    return {k: manifest.get(k) for k in keys if k in manifest}


def _scan_sources(ws: Workspace, sources: list[_Source], allow: frozenset[str]) -> None:
    from rag.secrets import KEY_SHAPES

    live = live_secrets([ws.config.teacher.key_name or "", ws.config.audit.hmac_key_name or ""])
    known = {s.id for s in KEY_SHAPES} | {n for names in live.values() for n in names}
    unknown = sorted(allow - known)
    if unknown:
        raise ConfigError(
            f"--allow-secret {unknown[0]} names no key shape and no key held here; use a shape "
            f"({', '.join(sorted(s.id for s in KEY_SHAPES))}) or the env var / keyring name of a key."
        )
    for s in sources:
        if s.scan == "store":
            scan_store_for_secrets(s.path, s.arcname, live, allow)
        elif s.scan is not None:
            scan_file_for_secrets(s.path, s.arcname, live, assignments=(s.scan == "full"), allow=allow)


def _write_tar(dest: Path, sources: list[_Source], body: dict[str, Any], compressed: bool,
               progress: Progress | None) -> int:
    """Write manifest first, then every source, hashing as bytes stream into the tar.

    Plain .tar: the manifest is written with placeholder hashes of the same length and
    patched in place at the end (one read of each file). .tar.gz cannot be patched, so the
    files are hashed in a first pass and checked again while writing.
    """
    sizes = {s.arcname: s.path.stat().st_size for s in sources}
    total = sum(sizes.values())
    hashes: dict[str, str] = {}
    if compressed:
        advance = counter(progress, total, "hashing")
        for s in sources:
            hashes[s.arcname] = sha256_file(s.path)
            advance(sizes[s.arcname])

    def manifest_bytes() -> bytes:
        members = [{"path": s.arcname, "size": sizes[s.arcname], "sha256": hashes.get(s.arcname, "0" * 64)} for s in sources]
        return seal_manifest({**body, "members": members})

    first = manifest_bytes()
    with open(dest, "wb") as raw:
        with tarfile.open(fileobj=raw, mode="w:gz" if compressed else "w", format=tarfile.PAX_FORMAT) as tf:
            tf.addfile(_tarinfo(MANIFEST_NAME, len(first), time.time()), io.BytesIO(first))
            manifest_data_at = tf.offset - _padded(len(first))
            advance = counter(progress, total, "bundling")
            for s in sources:
                _add_source(tf, s, sizes[s.arcname], hashes, advance)
        if not compressed:
            final = manifest_bytes()
            assert len(final) == len(first)
            raw.seek(manifest_data_at)
            raw.write(final)
        raw.flush()
        os.fsync(raw.fileno())
    return total


def _padded(n: int) -> int:
    return -(-n // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def _add_source(tf: tarfile.TarFile, s: _Source, size: int, hashes: dict[str, str], advance: Callable[[int], None]) -> None:
    with open(s.path, "rb") as f:
        reader = _HashingReader(f, advance)
        try:
            tf.addfile(_tarinfo(s.arcname, size, os.fstat(f.fileno()).st_mtime), reader)
        except OSError:
            raise IntegrityError(f"{s.path} shrank while it was bundled; make sure nothing writes to it and retry.") from None
        grew = f.read(1) != b""
    digest = reader.sha.hexdigest()
    if grew or (s.arcname in hashes and hashes[s.arcname] != digest):
        raise IntegrityError(f"{s.path} changed while it was bundled; make sure nothing writes to it and retry.")
    if (s.expect_size is not None and s.expect_size != size) or (s.expect_sha and s.expect_sha.removeprefix("sha256:") != digest):
        raise IntegrityError(f"{s.path} does not match its export manifest (size/sha256); re-run 'raftsmith export'.")
    hashes[s.arcname] = digest
