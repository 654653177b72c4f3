"""Resolve "base" / "tuned" / NAME to a concrete model for each backend.

The A/B switch needs no file paths: ``base`` and ``tuned`` are looked up from the workspace.

* llama-cpp: base = chat.base_gguf, else the newest export's "base" GGUF, else the packaged
  SmolLM2 when student.family is smollm2; tuned = the newest export's merged GGUF (or base +
  LoRA adapter when no merged file exists, or when asked for "tuned-adapter").
* ollama: ollama.base_model_name / ollama.tuned_model_name, else the names
  ``raftsmith register`` gives the newest export (``<export>-base`` and ``<export>``).
* openai: the same names as Ollama when configured, else the name as given.

Exports are read through :mod:`rag.exports`; the Ollama names come from :mod:`rag.register`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag.config import Workspace
from rag.errors import ConfigError
from rag.exports import Export, find_export, newest_export
from rag.fsutil import file_digest
from rag.register import ollama_names

ROLES = ("base", "tuned", "tuned-adapter")


@dataclass
class ModelRef:
    role: str  # base | tuned | tuned-adapter | custom
    label: str  # shown to people and written to the audit log
    backend: str
    path: Path | None = None  # llama-cpp GGUF
    adapter_path: Path | None = None  # llama-cpp LoRA GGUF
    remote_name: str | None = None  # ollama / openai model name
    digest: str | None = None  # "sha256:..." of the GGUF (+ adapter) when known
    stop: list[str] = field(default_factory=list)
    export: Export | None = None

    def audit_model(self) -> dict[str, Any]:
        return {"name": self.label, "digest": self.digest}


def _no_export(ws: Workspace, what: str) -> ConfigError:
    return ConfigError(
        f"No {what} found: no export in {ws.export_dir}. Run 'raftsmith train' and 'raftsmith export' first, "
        "or ask the base model with --model base."
    )


def _llama_base(ws: Workspace, export: Export | None) -> tuple[Path, str | None]:
    cfg = ws.config
    if cfg.chat.base_gguf:
        p = ws.path(cfg.chat.base_gguf)
        if not p.is_file():
            raise ConfigError(f"chat.base_gguf points to {p}, which does not exist; fix the path in raftsmith.yaml.")
        return p, None
    if export is not None:
        hit = export.file("base", cfg.export.quantizations)
        if hit is not None and hit[0].is_file():
            return hit[0], hit[1].get("sha256")
    if cfg.student.family == "smollm2":
        from rag.packaged import smollm2_gguf

        return smollm2_gguf(), None
    raise ConfigError(
        f"No base GGUF for family '{cfg.student.family}': set chat.base_gguf in raftsmith.yaml to a GGUF file, "
        "or run 'raftsmith export' (it writes the base model as GGUF too)."
    )


def _resolve_llama(ws: Workspace, ref: str) -> ModelRef:
    export = newest_export(ws)
    quants = ws.config.export.quantizations
    if ref == "base":
        path, sha = _llama_base(ws, export)
        return ModelRef("base", f"base ({path.name})", "llama-cpp", path=path,
                        digest=file_digest(path, sha), stop=export.stop if export else [], export=export)
    if ref in ("tuned", "tuned-adapter"):
        if export is None:
            raise _no_export(ws, "tuned model")
        return _tuned_from_export(ws, export, adapter=(ref == "tuned-adapter"), quants=quants)
    named = find_export(ws, ref)
    if named is not None:
        return _tuned_from_export(ws, named, adapter=False, quants=quants)
    p = ws.path(ref)
    if p.is_file() and p.suffix.lower() == ".gguf":
        return ModelRef("custom", p.name, "llama-cpp", path=p, digest=file_digest(p))
    raise ConfigError(
        f"Unknown model '{ref}': use 'base', 'tuned', 'tuned-adapter', an export name in {ws.export_dir} "
        "or the path of a .gguf file."
    )


def _tuned_from_export(ws: Workspace, export: Export, *, adapter: bool, quants: list[str]) -> ModelRef:
    merged = None if adapter else export.file("merged", quants)
    if merged is not None:
        path, entry = merged
        if not path.is_file():
            raise ConfigError(f"{path} is listed in {export.dir / 'manifest.json'} but missing; rerun 'raftsmith export'.")
        return ModelRef("tuned", f"tuned ({export.name})", "llama-cpp", path=path,
                        digest=file_digest(path, entry.get("sha256")), stop=export.stop, export=export)
    ad = export.file("adapter")
    if ad is None:
        what = "adapter" if adapter else "merged or adapter GGUF"
        raise ConfigError(f"Export {export.dir} has no {what}; rerun 'raftsmith export'" + (" with --adapter." if adapter else "."))
    base_path, base_sha = _llama_base(ws, export)
    ad_path, ad_entry = ad
    if not ad_path.is_file():
        raise ConfigError(f"{ad_path} is listed in the export manifest but missing; rerun 'raftsmith export'.")
    combined = hashlib.sha256((file_digest(base_path, base_sha) + file_digest(ad_path, ad_entry.get("sha256"))).encode()).hexdigest()
    return ModelRef("tuned-adapter", f"tuned-adapter ({export.name})", "llama-cpp", path=base_path,
                    adapter_path=ad_path, digest=f"sha256:{combined}", stop=export.stop, export=export)


def resolve_model(ws: Workspace, ref: str | None = None, backend: str | None = None) -> ModelRef:
    """Turn "base" | "tuned" | "tuned-adapter" | NAME into a model the given backend can load."""
    ref = (ref or ws.config.chat.model).strip()
    backend = backend or ws.config.chat.backend
    if backend == "llama-cpp":
        return _resolve_llama(ws, ref)
    if backend not in ("ollama", "openai"):
        raise ConfigError(f"Unknown backend '{backend}': use llama-cpp, ollama or openai.")
    export = newest_export(ws)
    stop = export.stop if export else []
    base, tuned = ollama_names(ws, export)
    if ref == "base":
        if not base:
            if backend == "openai":
                return ModelRef("base", "base", backend, remote_name="base", stop=stop)
            raise ConfigError("No base model name for Ollama: set ollama.base_model_name in raftsmith.yaml "
                              "(e.g. smollm2:135m), or run 'raftsmith register' after an export that includes the base GGUF.")
        return ModelRef("base", f"base ({base})", backend, remote_name=base, stop=stop, export=export)
    if ref in ("tuned", "tuned-adapter"):
        if not tuned:
            if backend == "openai":
                return ModelRef("tuned", "tuned", backend, remote_name="tuned", stop=stop)
            raise _no_export(ws, "tuned model for Ollama")
        return ModelRef("tuned", f"tuned ({tuned})", backend, remote_name=tuned, stop=stop, export=export)
    return ModelRef("custom", ref, backend, remote_name=ref, stop=stop)
