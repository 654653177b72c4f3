"""``bundle install``: verify while extracting into a hidden sibling of the destination, then
move it into place in one rename; configure the workspace for the llama-cpp backend.

Nothing is written outside ``dest`` and its temporary sibling (removed in every case), and a
failed install leaves ``dest`` as it was. Registering with Ollama and the audit record come
after the files are in place: a down Ollama does not undo a verified install.
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import shutil
import sqlite3
import tarfile
import tempfile
import time
from pathlib import Path
from typing import IO

import yaml

from rag.bundle.manifest import BundleManifest, ManifestEntry
from rag.bundle.members import CONFIG_MEMBER
from rag.bundle.paths import check_inside
from rag.bundle.reader import STATE_MANIFEST, read_manifest, walk_hashed
from rag.bundle.reports import InstallReport
from rag.config import STATE_DIR, Workspace, dump_config, load_workspace, parse_config
from rag.errors import ConfigError, IntegrityError, RaftsmithError
from rag.fsutil import atomic_write, sha256_file
from rag.progress import Progress, counter


def install_path(member: str, export_name: str | None) -> str:
    """Where a bundle member lands inside the installed workspace."""
    if member.startswith("export/"):
        if not export_name:
            raise IntegrityError("the bundle holds export files but names no export; the bundle is damaged")
        return f"gguf/{export_name}/{member[len('export/'):]}"
    return member


def extract_verified(src: Path, target: Path, progress: Progress | None) -> tuple[BundleManifest, int, str]:
    """Stream ``src`` into the empty folder ``target``, checking every member on the way.

    Each member passes our checks (in ``walk``) and tarfile's own ``data`` filter before a
    byte is written; files are created exclusively (no following links); after the walk
    every written file is hashed again from disk. Returns (manifest, payload bytes, sha256
    of the bundle file).
    """
    written: list[tuple[Path, ManifestEntry]] = []
    data_filter = getattr(tarfile, "data_filter", None)  # Python 3.11.4+ / 3.10.12+

    def sink(m: tarfile.TarInfo, entry: ManifestEntry, manifest: BundleManifest) -> IO[bytes]:
        if data_filter is not None:
            try:
                data_filter(m, str(target))
            except tarfile.FilterError as err:
                raise IntegrityError(f"bundle member {ascii(m.name)} refused by tarfile's data filter: {err}") from None
        dst = target / install_path(entry.path, manifest.export_name)
        dst.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
        written.append((dst, entry))
        return os.fdopen(fd, "wb")

    with open(src, "rb") as raw:
        manifest, total, digest = walk_hashed(raw, sink, counter(progress, src.stat().st_size, "installing"))
    for dst, entry in written:  # re-hash what reached the disk
        if dst.stat().st_size != entry.size or sha256_file(dst) != entry.sha256:
            raise IntegrityError(f"{dst} does not match the manifest after writing; check the disk and retry.")
    return manifest, total, digest


# A killed install leaves its hidden sibling behind. Each install holds an flock on a marker
# inside its own, so the next run can tell an abandoned folder (lock free) from a running one.
_MARKER = ".raftsmith-installing"


def _hold_marker(tmp: Path) -> IO[str]:
    fh = open(tmp / _MARKER, "w", encoding="utf-8")  # noqa: SIM115 - held for the whole install
    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    return fh


def clean_stale_installs(dest: Path) -> list[Path]:
    """Remove ``.<dest>.installing-*`` siblings left by killed installs; return what was removed.

    Only folders that hold our marker and whose marker lock is free (no install is using
    them) are removed; anything else with a similar name is left alone.
    """
    removed = []
    for cand in sorted(dest.parent.glob(f".{glob.escape(dest.name)}.installing-*")):
        marker = cand / _MARKER
        if cand.is_symlink() or not cand.is_dir() or marker.is_symlink() or not marker.is_file():
            continue
        try:
            fh = open(marker, encoding="utf-8")  # noqa: SIM115 - closed below
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # an install is running there now
            shutil.rmtree(cand, ignore_errors=True)
            removed.append(cand)
        finally:
            fh.close()
    return removed


def _check_dest(dest: Path) -> None:
    if dest.is_symlink():
        raise ConfigError(f"--dest {dest} is a symlink; pass a real folder path.")
    if dest.exists() and not dest.is_dir():
        raise ConfigError(f"--dest {dest} exists and is not a folder; choose a new folder.")
    if dest.is_dir() and any(dest.iterdir()):
        raise ConfigError(f"--dest {dest} is not empty; choose a new or empty folder (nothing was changed).")


def _check_space(src: Path, dest: Path) -> None:
    """Refuse up front when the declared payload does not fit (a .tar.gz can expand a lot)."""
    need = sum(e.size for e in read_manifest(src).entries.values()) + (64 << 20)
    probe = dest.parent
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if need > free:
        raise ConfigError(
            f"The bundle needs {need / 2**30:.1f} GiB in {probe} but only {free / 2**30:.1f} GiB is free; "
            "free some space or choose another --dest."
        )


def _make_parents(parent: Path) -> list[Path]:
    """Create missing parent folders; return them so a failed install can remove them again."""
    missing = []
    p = parent
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir()
    return missing


def _configure(root: Path, manifest: BundleManifest) -> Path:
    """Rewrite raftsmith.yaml for this machine: llama-cpp backend, bundled index/model/export."""
    cfg_path = root / CONFIG_MEMBER
    try:
        data = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
    except (yaml.YAMLError, UnicodeDecodeError):
        raise IntegrityError(f"the bundled {CONFIG_MEMBER} is not valid YAML; rebuild the bundle with 'raftsmith bundle create'") from None
    cfg = parse_config(data, f"bundled {CONFIG_MEMBER}")
    paths = manifest.entries
    check_inside(cfg, root)  # as bundled: refuse a crafted config before anything is rewritten
    cfg.chat.backend = "llama-cpp"
    cfg.chat.base_gguf = None
    cfg.export.out_dir = "gguf"
    if any(p.startswith("index/") for p in paths):
        cfg.index.path = "index"
    if any(p.startswith("embedding/") for p in paths):
        # Relative to the workspace root: the installed folder keeps working when it is moved.
        cfg.embedding.model = "embedding"
        _rehome_index(root / "index", str(manifest.raw.get("embedding_model") or "default"), cfg.embedding.model)
    if any(p.startswith("rerank/") for p in paths):
        cfg.chat.rerank_model = "rerank"
    if any(p.startswith("domain_questions/") for p in paths):
        cfg.raft.questions = ["domain_questions"]
    check_inside(cfg, root)
    header = "# raftsmith workspace installed from a bundle by 'raftsmith bundle install'.\n"
    atomic_write(cfg_path, header + dump_config(cfg))
    return cfg_path


def _rehome_index(index_dir: Path, bundled_as: str, now: str) -> None:
    """The index records which embedding.model built it; point that record at the bundled copy.

    The bundle carries exactly the folder ``bundled_as`` resolved to at create time, so the
    vectors stay valid; only the name changes. Other values are left for the retriever to flag.
    """
    db = index_dir / "store.sqlite"
    if db.is_file():
        con = sqlite3.connect(db)
        try:
            with con:  # the store's key/value meta table (rag.index.store)
                con.execute("UPDATE meta SET value=? WHERE key='embedding_model' AND value=?", (now, bundled_as))
        except sqlite3.Error:
            pass  # not a raftsmith store: the retriever will say what is wrong with it
        finally:
            con.close()
    meta = index_dir / "meta.json"
    if meta.is_file():
        try:
            data = json.loads(meta.read_text(encoding="utf-8"))
        except ValueError:
            return  # not ours to judge here; the retriever rebuilds FAISS from SQLite
        if isinstance(data, dict) and data.get("embedding_model") == bundled_as:
            data["embedding_model"] = now
            atomic_write(meta, json.dumps(data, indent=2, sort_keys=True) + "\n")


def install_verified(src: Path, dest: Path, *, register: bool, host: str | None, progress: Progress | None,
                     expect_digest: str | None = None, check_signature: str | None = None,
                     signature: str | os.PathLike[str] | None = None) -> InstallReport:
    from rag.bundle import provenance

    t0 = time.perf_counter()
    if not src.is_file():
        raise ConfigError(f"Bundle {src} does not exist; pass the path of a .tar made by 'raftsmith bundle create'.")
    if expect_digest is not None:
        provenance.normalize_digest(expect_digest)
    if check_signature is not None:
        provenance.signing_key(check_signature)  # a missing key fails before the long read
    dest = dest.expanduser().absolute()
    _check_dest(dest)
    stale = clean_stale_installs(dest) if dest.parent.is_dir() else []
    _check_space(src, dest)
    created = _make_parents(dest.parent)
    existed = dest.is_dir()
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.installing-", dir=dest.parent))
    marker = None
    try:
        marker = _hold_marker(tmp)
        manifest, total, bundle_sha = extract_verified(src.absolute(), tmp, progress)
        provenance.check_digest(bundle_sha, expect_digest)
        signed = provenance.check_signature(src, bundle_sha, check_signature, signature)
        (tmp / STATE_DIR).mkdir(exist_ok=True)
        (tmp / STATE_MANIFEST).write_text(json.dumps(manifest.raw, indent=1, sort_keys=True), encoding="utf-8")
        _configure(tmp, manifest)
        os.chmod(tmp, 0o755)
        if existed:
            dest.rmdir()
        try:
            os.rename(tmp, dest)
        except OSError:
            if existed and not dest.exists():
                dest.mkdir()
            raise
        # The lock is held until the folder has its final name: no cleanup can take it first.
        (dest / _MARKER).unlink()
        marker.close()
        marker = None
    except BaseException:
        if marker is not None:
            marker.close()
        shutil.rmtree(tmp, ignore_errors=True)
        for d in created:  # innermost first
            try:
                d.rmdir()
            except OSError:
                break
        raise
    report = InstallReport(
        dest=str(dest), config_path=str(dest / CONFIG_MEMBER), members=len(manifest.entries), total_bytes=total,
        seconds=0.0, export_name=manifest.export_name, embedding_included=manifest.embedding_included,
        sha256=bundle_sha, signed_by=signed.key_name if signed else None,
        warnings=[f"removed {p.name}, left by an install that was killed" for p in stale],
    )
    ws = load_workspace(dest / CONFIG_MEMBER)
    _audit(ws, src, bundle_sha, manifest, report)
    if register:
        report.registered = _register(ws, host, manifest.export_name)
    report.seconds = round(time.perf_counter() - t0, 3)
    return report


def _audit(ws: Workspace, src: Path, bundle_sha: str, manifest: BundleManifest, report: InstallReport) -> None:
    from rag.audit import audit_event

    merged = next((e for p, e in manifest.entries.items() if p.startswith("export/model-") and p.endswith(".gguf")), None)
    try:
        audit_event(
            ws,
            "bundle_install",
            model={"name": manifest.export_name, "digest": f"sha256:{merged.sha256}" if merged else None},
            bundle=src.name,
            bundle_sha256=bundle_sha,
            bundle_created_at=manifest.created_at,
            members=len(manifest.entries),
            outcome="ok",
        )
    except RaftsmithError as err:  # e.g. audit.hmac_key_name set but that key is not on this machine
        report.warnings.append(f"installed, but the bundle_install audit record was not written: {err}")


def _register(ws: Workspace, host: str | None, export_name: str | None) -> list[str]:
    """Create the bundled models in Ollama (rag.register.register); the install stays either way."""
    from rag.register import register

    try:
        result = register(ws, host=host, export_name=export_name)
    except RaftsmithError as err:
        raise type(err)(
            f"The bundle is installed at {ws.root}, but registering with Ollama failed: {err}. "
            f"Once that is fixed, run: raftsmith register --config {ws.config_path}"
        ) from None
    return [m.name for m in result.models]


def install_bundle(
    path: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    register: bool = False,
    host: str | None = None,
    progress: Progress | None = None,
    *,
    expect_digest: str | None = None,
    check_signature: str | None = None,
    signature: str | os.PathLike[str] | None = None,
) -> InstallReport:
    """Verify and install a bundle into ``dest`` (a new or empty folder), configured for llama-cpp.

    ``expect_digest`` / ``check_signature`` (see :mod:`rag.bundle.provenance`) are checked
    against the bytes that were read, before the installed folder is moved into place.
    """
    return install_verified(Path(path), Path(dest), register=register, host=host, progress=progress,
                            expect_digest=expect_digest, check_signature=check_signature, signature=signature)
