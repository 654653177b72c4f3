"""``bundle install``: verify while extracting into a hidden sibling of the destination, then
move it into place in one rename; configure the workspace for the llama-cpp backend.

Nothing is written outside ``dest`` and its temporary sibling (removed in every case), and a
failed install leaves ``dest`` as it was. Registering with Ollama and the audit record come
after the files are in place: a down Ollama does not undo a verified install.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

import yaml

from rag.bundle import InstallReport
from rag.bundle_checks import CONFIG_MEMBER, BundleManifest
from rag.bundle_reader import STATE_MANIFEST, extract_verified, read_manifest
from rag.config import STATE_DIR, Workspace, dump_config, load_workspace, parse_config
from rag.errors import ConfigError, IntegrityError, RaftsmithError


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
    cfg.chat.backend = "llama-cpp"
    cfg.chat.base_gguf = None
    cfg.export.out_dir = "gguf"
    if any(p.startswith("index/") for p in paths):
        cfg.index.path = "index"
    if any(p.startswith("embedding/") for p in paths):
        # Relative to the workspace root: the installed folder keeps working when it is moved.
        cfg.embedding.model = "embedding"
        _rehome_index(root / "index", str(manifest.raw.get("embedding_model") or "default"), cfg.embedding.model)
    audit = Path(cfg.audit.path)
    if audit.is_absolute() or ".." in audit.parts or cfg.audit.path.startswith("~"):
        # The home machine's log location does not travel; everything stays inside dest.
        cfg.audit.path = f"{STATE_DIR}/audit.jsonl"
    if any(p.startswith("domain_questions/") for p in paths):
        cfg.raft.questions = ["domain_questions"]
    header = "# raftsmith workspace installed from a bundle by 'raftsmith bundle install'.\n"
    tmp = cfg_path.with_suffix(".yaml.tmp")
    tmp.write_text(header + dump_config(cfg), encoding="utf-8")
    os.replace(tmp, cfg_path)
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
            meta.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def install_verified(src: Path, dest: Path, *, register: bool, host: str | None, progress: bool) -> InstallReport:
    t0 = time.perf_counter()
    if not src.is_file():
        raise ConfigError(f"Bundle {src} does not exist; pass the path of a .tar made by 'raftsmith bundle create'.")
    dest = dest.expanduser().absolute()
    _check_dest(dest)
    _check_space(src, dest)
    created = _make_parents(dest.parent)
    existed = dest.is_dir()
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.installing-", dir=dest.parent))
    try:
        manifest, total, bundle_sha = extract_verified(src.absolute(), tmp, progress)
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
    except BaseException:
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
    """Create the bundled models in Ollama (rag.ollama_api.register); the install stays either way."""
    from rag.ollama_api import register

    try:
        result = register(ws, host=host, export_name=export_name)
    except RaftsmithError as err:
        raise type(err)(
            f"The bundle is installed at {ws.root}, but registering with Ollama failed: {err}. "
            f"Once that is fixed, run: raftsmith register --config {ws.config_path}"
        ) from None
    return [m.name for m in result.models]
