"""Where llama.cpp's converters come from: LLAMA_CPP_DIR, else the matching pip sdist.

A prepared copy in LLAMA_CPP_DIR must convert a real (tiny) model to a GGUF that
llama-cpp-python loads; with neither source available the error names both fixes.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from builder.export import llamacpp
from rag.errors import ExportError

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sdist_copy(repo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The converters extracted from the installed version's sdist (cached across runs).

    Module-scoped (runs before conftest's function-scoped isolation): point the cache at the
    shared test cache and HOME at a temp dir here."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAFTSMITH_CACHE", os.environ.get("RAFTSMITH_CACHE", str(repo_root / ".raftsmith-cache")))
        mp.setenv("HOME", str(tmp_path_factory.mktemp("home")))
        mp.delenv("LLAMA_CPP_DIR", raising=False)
        lc = llamacpp.provision()
    assert lc.source == "sdist"
    # not a git checkout: no commit, even when the cache sits inside a git repository
    assert lc.info()["commit"] is None and lc.info()["convert_hf_to_gguf_sha256"]
    return lc.root


def _tiny_llama(folder: Path) -> Path:
    """A 2-layer llama with SmolLM2's tokenizer: real weights format, converts in seconds."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from builder.families import get_family
    from builder.train.base_model import resolve_base

    base = resolve_base(get_family("smollm2"))
    tok = AutoTokenizer.from_pretrained(base.path)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_llama_cpp_dir_copy_converts_and_quantizes(sdist_copy, tmp_path, monkeypatch):
    copy = tmp_path / "llama.cpp"
    shutil.copytree(sdist_copy, copy)
    monkeypatch.setenv("LLAMA_CPP_DIR", str(copy))
    lc = llamacpp.provision()
    assert lc.source == "LLAMA_CPP_DIR" and lc.root == copy
    assert lc.llama_cpp_python == llamacpp.installed_version()
    hf = _tiny_llama(tmp_path / "tiny")
    f16 = llamacpp.convert_hf(lc, hf, tmp_path / "tiny-f16.gguf")
    q8 = llamacpp.quantize(f16, tmp_path / "tiny-q8_0.gguf", "q8_0")
    assert q8.stat().st_size < f16.stat().st_size
    from builder.export.verify import load_llama

    llm = load_llama(q8, n_ctx=64)
    assert llm.metadata["general.architecture"] == "llama"
    assert "im_start" in llm.metadata.get("tokenizer.chat_template", "")


def test_llama_cpp_dir_without_converters_is_a_clear_error(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("LLAMA_CPP_DIR", str(empty))
    with pytest.raises(ExportError) as err:
        llamacpp.provision()
    msg = str(err.value)
    assert "convert_hf_to_gguf.py" in msg and "LLAMA_CPP_DIR" in msg and "pip download" in msg


def test_no_dir_and_pip_cannot_fetch_names_both_fixes(tmp_path, monkeypatch):
    links = tmp_path / "no-links"
    links.mkdir()
    monkeypatch.delenv("LLAMA_CPP_DIR", raising=False)
    monkeypatch.setenv("RAFTSMITH_CACHE", str(tmp_path / "fresh-cache"))  # nothing extracted yet
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    with pytest.raises(ExportError) as err:
        llamacpp.provision()
    msg = str(err.value)
    assert "Could not fetch the llama-cpp-python" in msg
    assert "set LLAMA_CPP_DIR" in msg and f"llama-cpp-python=={llamacpp.installed_version()}" in msg


def test_unknown_quantization_is_rejected(tmp_path):
    with pytest.raises(ExportError, match="q4_k_m"):
        llamacpp.quantize(tmp_path / "x.gguf", tmp_path / "y.gguf", "q3_xyz")
