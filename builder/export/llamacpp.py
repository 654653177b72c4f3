"""llama.cpp's own converters and llama-cpp-python's quantizer, provisioned to match.

The converters (``convert_hf_to_gguf.py``, ``convert_lora_to_gguf.py``, the ``conversion``
package and ``gguf-py``) must come from the same llama.cpp as the installed
llama-cpp-python, or the GGUF it writes may not load. Where they come from, in order:

1. ``$LLAMA_CPP_DIR``: a llama.cpp checkout/copy (offline machines point this at one);
2. the sdist of the *exact installed* llama-cpp-python version, fetched with pip and its
   ``vendor/llama.cpp`` extracted once into ``$RAFTSMITH_CACHE/llama.cpp-<version>``.

Nothing is cloned or built at export time, and nothing is vendored into this repository.
The converters run as subprocesses with ``PYTHONPATH`` starting at the extracted ``gguf-py``,
so their ``gguf`` package is the one they were written against.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from builder.train.base_model import cache_dir, file_lock
from rag.errors import ExportError
from rag.fsutil import atomic_path

log = logging.getLogger(__name__)

NEEDED = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion", "gguf-py")
# llama.cpp's quantization types by the names users write in config (LLAMA_FTYPE_MOSTLY_*).
QUANT_TYPES = {
    "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "q4_1": "LLAMA_FTYPE_MOSTLY_Q4_1",
    "q5_0": "LLAMA_FTYPE_MOSTLY_Q5_0", "q5_1": "LLAMA_FTYPE_MOSTLY_Q5_1",
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q2_k": "LLAMA_FTYPE_MOSTLY_Q2_K",
    "q3_k_m": "LLAMA_FTYPE_MOSTLY_Q3_K_M", "q4_k_s": "LLAMA_FTYPE_MOSTLY_Q4_K_S",
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "q5_k_s": "LLAMA_FTYPE_MOSTLY_Q5_K_S",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M", "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
    "f16": "LLAMA_FTYPE_MOSTLY_F16", "bf16": "LLAMA_FTYPE_MOSTLY_BF16",
}


@dataclass(frozen=True)
class LlamaCpp:
    root: Path
    source: str  # "LLAMA_CPP_DIR" | "sdist"
    llama_cpp_python: str
    gguf_py_version: str | None
    converter_sha256: str  # identifies the converter when no git commit is recorded

    def info(self) -> dict[str, str | None]:
        return {"source": self.source, "root": str(self.root), "llama_cpp_python": self.llama_cpp_python,
                "gguf_py": self.gguf_py_version, "convert_hf_to_gguf_sha256": self.converter_sha256,
                "commit": git_commit(self.root)}


def installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama_cpp_python")
    except PackageNotFoundError:
        raise ExportError("llama-cpp-python is not installed; pip install 'raftsmith[build]'.") from None


def _missing(root: Path) -> list[str]:
    return [n for n in NEEDED if not (root / n).exists()]


def git_commit(root: Path) -> str | None:
    """The llama.cpp commit when the copy is itself a git checkout (an sdist copy has none).

    Only ``root/.git`` counts: git would otherwise report the commit of any repository the
    folder happens to sit inside (e.g. a cache inside a project checkout)."""
    if not (root / ".git").is_dir():
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _gguf_py_version(root: Path) -> str | None:
    pp = root / "gguf-py" / "pyproject.toml"
    if not pp.is_file():
        return None
    for line in pp.read_text(encoding="utf-8").splitlines():
        if line.strip().startswith("version"):
            return line.split("=", 1)[1].strip().strip('"')
    return None


def _describe(root: Path, source: str, version: str) -> LlamaCpp:
    digest = hashlib.sha256((root / "convert_hf_to_gguf.py").read_bytes()).hexdigest()
    return LlamaCpp(root, source, version, _gguf_py_version(root), digest)


def provision(env: dict[str, str] | None = None) -> LlamaCpp:
    """Find or fetch llama.cpp's converters matching the installed llama-cpp-python."""
    env = dict(os.environ if env is None else env)
    version = installed_version()
    fixes = (
        "Fix: set LLAMA_CPP_DIR to a llama.cpp copy holding convert_hf_to_gguf.py, "
        "convert_lora_to_gguf.py, conversion/ and gguf-py/ (on an offline machine copy "
        f"vendor/llama.cpp out of llama_cpp_python-{version}.tar.gz), or allow pip to download "
        f"the sdist: pip download --no-binary :all: --no-deps llama-cpp-python=={version}"
    )
    given = env.get("LLAMA_CPP_DIR")
    if given:
        root = Path(given).expanduser()
        miss = _missing(root)
        if miss:
            raise ExportError(f"LLAMA_CPP_DIR={root} lacks {', '.join(miss)}. {fixes}")
        return _describe(root, "LLAMA_CPP_DIR", version)
    target = cache_dir() / f"llama.cpp-{version}"
    with file_lock(cache_dir() / "locks" / f"{target.name}.lock"):
        if not (target / ".complete").is_file():
            _extract_from_sdist(version, target, env, fixes)
    return _describe(target, "sdist", version)


def _extract_from_sdist(version: str, target: Path, env: dict[str, str], fixes: str) -> None:
    with tempfile.TemporaryDirectory(prefix="raftsmith-sdist-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
               f"llama-cpp-python=={version}", "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        tars = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if proc.returncode != 0 and not tars:
            lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
            why = next((ln for ln in lines if ln.lower().startswith("error")), lines[-1] if lines else "no output")
            raise ExportError(f"Could not fetch the llama-cpp-python {version} sdist with pip ({why}). {fixes}")
        if not tars:
            raise ExportError(f"pip did not produce llama_cpp_python-{version}.tar.gz. {fixes}")
        staging = target.with_name(target.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
        with tarfile.open(tars[0]) as tf:
            members = []
            for m in tf.getmembers():
                if not m.name.startswith(prefix):
                    continue
                rel = m.name[len(prefix):]
                top = rel.split("/", 1)[0]
                if top in NEEDED or top in ("requirements", "requirements.txt", "LICENSE"):
                    m.name = rel
                    members.append(m)
            tf.extractall(staging, members=members, filter="data")
        miss = _missing(staging)
        if miss:
            raise ExportError(f"The llama-cpp-python {version} sdist lacks {', '.join(miss)}. {fixes}")
        (staging / ".complete").write_text(version)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)


def _run(lc: LlamaCpp, script: str, args: list[str], what: str) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(lc.root / "gguf-py"), str(lc.root), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("HF_HUB_OFFLINE", "1")  # everything the converters need is local
    cmd = [sys.executable, str(lc.root / script), *args]
    log.debug("running %s", " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(lc.root))
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-12:])
        raise ExportError(f"{what} failed (llama.cpp {script}, exit {proc.returncode}):\n{tail}")


def convert_hf(lc: LlamaCpp, hf_dir: Path, out: Path, outtype: str = "f16") -> Path:
    """HF folder -> GGUF with llama.cpp's convert_hf_to_gguf.py."""
    _run(lc, "convert_hf_to_gguf.py", [str(hf_dir), "--outfile", str(out), "--outtype", outtype],
         f"Converting {hf_dir} to GGUF")
    return out


def convert_lora(lc: LlamaCpp, adapter_dir: Path, base_hf_dir: Path, out: Path, outtype: str = "f16") -> Path:
    """PEFT adapter -> GGUF LoRA adapter with llama.cpp's convert_lora_to_gguf.py."""
    _run(lc, "convert_lora_to_gguf.py",
         [str(adapter_dir), "--base", str(base_hf_dir), "--outfile", str(out), "--outtype", outtype],
         f"Converting the adapter {adapter_dir} to GGUF")
    return out


def quantize(src: Path, dst: Path, quant: str, threads: int = 0) -> Path:
    """Quantize a GGUF with llama_cpp.llama_model_quantize (the library llama-cpp-python ships)."""
    import ctypes

    import llama_cpp

    key = quant.lower()
    if key not in QUANT_TYPES:
        raise ExportError(f"Unknown quantization '{quant}'. Use one of: {', '.join(sorted(QUANT_TYPES))}.")
    ftype = getattr(llama_cpp, QUANT_TYPES[key], None)
    if ftype is None:
        raise ExportError(f"This llama-cpp-python has no {QUANT_TYPES[key]}; pick another quantization.")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads or max(1, os.cpu_count() or 1)
    from builder.export.verify import quiet_stderr

    with atomic_path(dst) as tmp:
        with quiet_stderr():  # llama.cpp prints one line per tensor to fd 2
            rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
        if rc != 0 or not tmp.is_file():
            raise ExportError(f"Quantizing {src.name} to {quant} failed (llama_model_quantize returned {rc}); "
                              "rerun with RAFTSMITH_DEBUG=1 to see llama.cpp's log.")
    return dst
