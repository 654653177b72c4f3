"""``run_export``: a finished training run -> gguf/<name>/ with GGUFs, Modelfiles, manifest.

Steps: merge the adapter into the base (PEFT ``merge_and_unload``), save an HF folder, convert
it to an f16 GGUF with llama.cpp's ``convert_hf_to_gguf.py``, quantize to each configured type
with ``llama_cpp.llama_model_quantize``, convert the base the same way (``base-<quant>.gguf``,
cached per base hash), convert the adapter alone with ``convert_lora_to_gguf.py``, write the
Modelfiles, verify every GGUF with llama-cpp-python, and write ``manifest.json`` (format
``raftsmith-export/1``) with the sha256 of every file. The export folder is assembled in a
temporary sibling and renamed into place, so a failed export never leaves a half-written one.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.export import llamacpp
from builder.export.modelfile import MIN_NUM_CTX, render_modelfile, template_agreement
from builder.export.verify import Verification, verify_gguf
from builder.families import chat_format, get_family
from builder.retriever.report import manifest_entry as retriever_manifest_entry
from builder.train.base_model import BaseModel, cache_dir, file_lock, resolve_base
from builder.train.run import RUN_FILE, latest_run, library_versions, utc_now, write_json_atomic
from rag.config import Workspace
from rag.errors import ExportError
from rag.exports import EXPORT_FORMAT
from rag.fsutil import atomic_path, sha256_file
from rag.progress import Progress, emit
from rag.prompting import SYSTEM_PROMPT


@dataclass
class ExportResult:
    export_dir: Path
    manifest_path: Path
    name: str
    files: list[dict[str, Any]]
    verification: list[Verification]
    seconds: float
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(v.ok for v in self.verification)

    def to_dict(self) -> dict[str, Any]:
        return {"export_dir": str(self.export_dir), "manifest": str(self.manifest_path), "name": self.name,
                "files": self.files, "verification": [v.to_dict() for v in self.verification],
                "seconds": self.seconds, "ok": self.ok, "warnings": self.warnings}


def _step(progress: Progress | None, msg: str) -> None:
    """Export's stages have no count: ``(0, 0, label)`` events."""
    emit(progress, 0, 0, f"export {msg}")


def run_export(
    ws: Workspace,
    run_dir: str | os.PathLike[str] | None = None,
    quantizations: list[str] | None = None,
    adapter: bool | None = None,
    name: str | None = None,
    progress: Progress | None = None,
) -> ExportResult:
    t0 = time.time()
    run = Path(run_dir) if run_dir else latest_run(ws, done=True)
    if run is None or not (run / RUN_FILE).is_file():
        raise ExportError(f"No finished training run found in {ws.path(ws.config.student.output_dir)}. "
                          "Run 'raftsmith train' first (or pass the run folder).")
    meta = json.loads((run / RUN_FILE).read_text())
    meta["run_name"] = run.name
    if meta.get("status") != "done" or not (run / "adapter").is_dir():
        raise ExportError(f"Training run {run.name} did not finish; finish it with 'raftsmith train --resume'.")
    fam = get_family(meta["family"])
    fmt = chat_format(fam)
    quants = [q.lower() for q in (quantizations or ws.config.export.quantizations)]
    for q in quants:
        if q not in llamacpp.QUANT_TYPES:
            raise ExportError(f"Unknown quantization '{q}' in export.quantizations; use q4_k_m, q5_k_m, q8_0 or f16.")
    want_adapter = ws.config.export.adapter if adapter is None else adapter
    export_name = name or ws.config.export.name or f"{ws.config.corpus.name}-{fam.name}"
    if not export_name or any(c in export_name for c in "/\\ "):
        raise ExportError(f"Export name {export_name!r} must be a plain folder name (no slashes or spaces).")

    from builder.train.backends import quiet_libraries

    quiet_libraries(progress is not None)
    lc = llamacpp.provision()
    base = resolve_base(fam, meta["base_model"].get("request"))
    if base.sha256 != meta["base_model"]["sha256"]:
        raise ExportError(f"The base model changed since training ({base.path}); retrain or restore it.")
    warnings: list[str] = []
    final = ws.export_dir / export_name
    work = ws.export_dir / f".{export_name}.partial-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    (work / "tmp").mkdir(parents=True)
    try:
        files, checks = _build(ws, run, meta, base, lc, quants, want_adapter, work, fmt, fam, progress)
        agreement = _template_check(run, fmt)
        if agreement.get("checked") and not agreement.get("match"):
            warnings.append(
                f"The base model's chat template and modelfiles/{fmt.modelfile_template} build different "
                "prompts, so the model served by Ollama would see a layout it was not trained on. "
                "Use the GGUF with llama.cpp (it uses the embedded template), or adjust the "
                f"template; details in manifest.json 'template_check'.")
        manifest = _manifest(ws, export_name, meta, base, lc, fam, fmt, files, checks)
        manifest["template_check"] = agreement
        bad = [c for c in checks if not c.ok]
        shutil.rmtree(work / "tmp", ignore_errors=True)
        if bad:
            # Keep the files for inspection, but never where a runtime looks for exports
            # (no manifest.json, a folder name that is not the export's).
            write_json_atomic(work / "manifest.failed.json", manifest)
            failed = ws.export_dir / f"{export_name}.FAILED"
            shutil.rmtree(failed, ignore_errors=True)
            os.replace(work, failed)
            raise ExportError(
                "Verification failed for " + "; ".join(
                    f"{c.path}{' + ' + c.adapter if c.adapter else ''}: {c.problem}" for c in bad)
                + f". Nothing was published; the files are in {failed} for inspection.")
        write_json_atomic(work / "manifest.json", manifest)
        if final.exists():
            shutil.rmtree(final)
        os.replace(work, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ExportResult(export_dir=final, manifest_path=final / "manifest.json", name=export_name,
                        files=manifest["files"], verification=checks, seconds=round(time.time() - t0, 1),
                        warnings=warnings)


def _build(ws: Workspace, run: Path, meta: dict[str, Any], base: BaseModel, lc: llamacpp.LlamaCpp,
           quants: list[str], want_adapter: bool, work: Path, fmt: Any, fam: Any,
           progress: Progress | None) -> tuple[list[tuple[str, str, str | None]], list[Verification]]:
    files: list[tuple[str, str, str | None]] = []  # (name, role, quantization)
    # The adapter's conversion needs only the adapter and the base model: it runs in its own
    # process while the merge and the merged model's conversion go on here.
    with ThreadPoolExecutor(max_workers=1) as pool:
        adapter_job = None
        if want_adapter:
            _step(progress, "converting the adapter (llama.cpp convert_lora_to_gguf.py), in parallel")
            adapter_job = pool.submit(llamacpp.convert_lora, lc, run / "adapter", Path(base.path),
                                      work / "adapter.gguf", "f16")
        _convert_merged(run, base, lc, quants, work, files, progress)
        if adapter_job is not None:
            adapter_job.result()
            files.append(("adapter.gguf", "adapter", "f16"))
    num_ctx = max(ws.config.chat.num_ctx, MIN_NUM_CTX)
    first = quants[0]
    (work / "Modelfile").write_text(render_modelfile(fmt, f"./model-{first}.gguf", SYSTEM_PROMPT, num_ctx))
    files.append(("Modelfile", "modelfile", None))
    if want_adapter:
        ollama_base = ws.config.ollama.base_model_name or fam.ollama_base
        (work / "Modelfile.adapter").write_text(
            render_modelfile(fmt, ollama_base, SYSTEM_PROMPT, num_ctx, adapter="./adapter.gguf"))
        files.append(("Modelfile.adapter", "modelfile-adapter", None))
    _step(progress, "verifying every GGUF with llama-cpp-python")
    arch = None
    checks: list[Verification] = []
    for fname, role, _q in files:
        if role in ("merged", "base"):
            v = verify_gguf(work / fname, expect_arch=arch)
            arch = arch or v.architecture
            checks.append(v)
    if want_adapter:
        checks.append(verify_gguf(work / f"base-{first}.gguf", lora=work / "adapter.gguf", expect_arch=arch))
    return files, checks


def _convert_merged(run: Path, base: BaseModel, lc: llamacpp.LlamaCpp, quants: list[str], work: Path,
                    files: list[tuple[str, str, str | None]], progress: Progress | None) -> None:
    """Merge the adapter, convert and quantize the merged model; link in the cached base GGUFs."""
    tmp = work / "tmp"
    _step(progress, f"merging {run.name}/adapter into {base.id}")
    merged = merge_adapter(Path(base.path), run / "adapter", tmp / "hf-merged")
    _step(progress, "converting the merged model to GGUF (llama.cpp convert_hf_to_gguf.py)")
    f16 = llamacpp.convert_hf(lc, merged, tmp / "model-f16.gguf", "f16")
    for q in quants:
        out = work / f"model-{q}.gguf"
        if q == "f16":
            shutil.copyfile(f16, out)
        else:
            _step(progress, f"quantizing to {q}")
            llamacpp.quantize(f16, out, q)
        files.append((out.name, "merged", q))
        base_out = work / f"base-{q}.gguf"
        _step(progress, f"base model as {q}")
        cached = base_gguf(lc, base, q)
        try:
            os.link(cached, base_out)  # the cache and the export share a disk: no second copy
        except OSError:
            shutil.copyfile(cached, base_out)
        files.append((base_out.name, "base", q))
    shutil.rmtree(merged, ignore_errors=True)


def _template_check(run: Path, fmt: Any) -> dict[str, Any]:
    from transformers import AutoTokenizer

    return template_agreement(fmt, AutoTokenizer.from_pretrained(str(run / "adapter")))


def merge_adapter(base_path: Path, adapter_dir: Path, out: Path) -> Path:
    """Base + LoRA -> a plain HF folder (weights in the base's float type, fp32 on CPU)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(base_path), dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(str(adapter_dir)).save_pretrained(out)
    return out


def base_gguf(lc: llamacpp.LlamaCpp, base: BaseModel, quant: str) -> Path:
    """The base model as ``quant`` GGUF, built once per (base hash, converter) in the cache."""
    d = cache_dir() / "gguf"
    d.mkdir(parents=True, exist_ok=True)
    key = f"{base.sha256[:16]}-{lc.converter_sha256[:8]}"
    target = d / f"{key}-{quant}.gguf"
    with file_lock(cache_dir() / "locks" / f"gguf-{key}.lock"):
        if target.is_file():
            return target
        f16 = d / f"{key}-f16.gguf"
        if not f16.is_file():
            with atomic_path(f16) as tmp:
                llamacpp.convert_hf(lc, Path(base.path), tmp, "f16")
        if quant != "f16":
            llamacpp.quantize(f16, target, quant)
    return target


def _manifest(ws: Workspace, name: str, meta: dict[str, Any], base: BaseModel, lc: llamacpp.LlamaCpp,
              fam: Any, fmt: Any, files: list[tuple[str, str, str | None]], checks: list[Verification]) -> dict[str, Any]:
    work_files = []
    for fname, role, q in files:
        p = ws.export_dir / f".{name}.partial-{os.getpid()}" / fname
        work_files.append({"path": fname, "role": role, "quantization": q, "sha256": sha256_file(p),
                           "size": p.stat().st_size})
    versions = {**library_versions(), **{f"training:{k}": v for k, v in meta.get("versions", {}).items()}}
    info = lc.info()
    versions["llama.cpp"] = info["commit"] or (
        f"vendor/llama.cpp of llama-cpp-python {lc.llama_cpp_python} (converter sha256 {lc.converter_sha256[:12]})")
    return {
        "format": EXPORT_FORMAT,
        "name": name,
        "family": fam.name,
        "chat_format": fmt.name,
        "created_at": utc_now(),
        "base_model": {"id": base.id, "sha256": base.sha256, "source": base.source},
        "stop": list(fmt.stop),
        "system_prompt": SYSTEM_PROMPT,
        "files": work_files,
        "training_data": meta["training_data"],
        "hyperparameters": meta["hyperparameters"],
        "versions": versions,
        "final_loss": meta.get("final_loss"),
        "eval_loss": meta.get("eval_loss"),
        "training_run": meta.get("run_name"),
        "converter": lc.info(),
        "ollama": {"base_model": ws.config.ollama.base_model_name or fam.ollama_base,
                   "num_ctx": max(ws.config.chat.num_ctx, MIN_NUM_CTX)},
        "verification": [c.to_dict() for c in checks],
        # the tuned embedder's base-vs-tuned recall, while embedding.model is that embedder
        **({"retriever": entry} if (entry := retriever_manifest_entry(ws)) else {}),
    }
