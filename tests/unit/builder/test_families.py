"""The family registry: complete, consistent with modelfiles/ and the VRAM figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.families import CHAT_FORMATS, FAMILIES, chat_format, get_family, vram_estimate_gb
from rag.config import RaftsmithConfig
from rag.errors import ConfigError

REPO = Path(__file__).resolve().parents[3]


def test_all_six_families_with_their_formats():
    assert {n: f.chat_format for n, f in FAMILIES.items()} == {
        "smollm2": "chatml", "qwen": "chatml", "phi-4-mini": "phi-3", "mistral": "mistral-instruct",
        "llama3": "llama3-instruct", "gpt-oss": "harmony"}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_entry_is_complete(name):
    fam = get_family(name)
    assert fam.hf_id.count("/") == 1
    assert fam.packaged_gguf or (fam.unsloth_id and "unsloth/" in fam.unsloth_id)
    assert fam.target_modules and fam.r > 0 and fam.alpha > 0 and 0 < fam.lr < 1e-2
    fmt = chat_format(fam)
    assert fmt.stop, "every format needs stop strings"
    assert (REPO / "modelfiles" / fmt.modelfile_template).is_file()


def test_published_qlora_vram_figures():
    assert get_family("qwen").vram_gb == 3.5  # 3B
    assert 5.0 <= get_family("mistral").vram_gb <= 6.0  # 7B
    assert 5.0 <= get_family("llama3").vram_gb <= 6.0  # 8B
    assert get_family("gpt-oss").vram_gb == 14.0  # 20B
    fam = get_family("llama3")
    assert vram_estimate_gb(fam, max_seq_len=1024, batch_size=1) == fam.vram_gb
    assert vram_estimate_gb(fam, max_seq_len=2048, batch_size=4) > fam.vram_gb


def test_stop_strings_match_ollama_format_parameters(shared_dir):
    import json

    for name in ("chatml", "phi-3", "llama3-instruct"):
        ollama = json.loads((shared_dir / "peer" / "ollama-templates" / f"{name}.json").read_text())
        assert set(ollama["stop"]) <= set(CHAT_FORMATS[name].stop)


def test_unknown_family_names_the_choices():
    with pytest.raises(ConfigError, match="smollm2, qwen"):
        get_family("gpt-5")


def test_config_default_family_is_in_registry():
    assert RaftsmithConfig().student.family in FAMILIES


def test_hyperparameters_family_defaults_unless_config_sets_them(tmp_path):
    from builder.train.run import hyperparameters
    from rag.config import init_workspace, load_workspace

    ws = init_workspace(tmp_path / "a")
    hp = hyperparameters(ws, get_family("smollm2"), None)
    assert (hp["lr"], hp["epochs"], hp["r"], hp["alpha"]) == (3e-3, 3.0, 16, 32)
    assert hp["target_modules"] == list(get_family("smollm2").target_modules)
    assert hp["rslora"] is False and hp["top_layers"] is None  # every layer
    hp = hyperparameters(ws, get_family("qwen"), None)
    assert (hp["lr"], hp["r"], hp["alpha"]) == (2e-4, 32, 64)  # alpha = 2r
    hp = hyperparameters(ws, get_family("gpt-oss"), None)
    assert (hp["r"], hp["alpha"], hp["rslora"]) == (128, 256, True)
    cfg = ws.config_path
    cfg.write_text(cfg.read_text().replace("  lr: null", "  lr: 0.0005").replace("  epochs: null", "  epochs: 2.0"))
    ws2 = load_workspace(cfg)
    hp = hyperparameters(ws2, get_family("smollm2"), None)
    assert (hp["lr"], hp["epochs"]) == (5e-4, 2.0)
    assert hyperparameters(ws2, get_family("smollm2"), 7)["epochs"] == 7.0


def test_a_value_the_user_writes_wins_even_when_it_equals_the_old_schema_default(tmp_path):
    from builder.train.run import hyperparameters
    from rag.config import init_workspace, load_workspace

    ws = init_workspace(tmp_path / "a")
    assert "  epochs: null" in ws.config_path.read_text()  # init writes "derived", not a number
    qwen = get_family("qwen")
    assert (hyperparameters(ws, qwen, None)["alpha"], hyperparameters(ws, qwen, None)["epochs"]) == (64, 3.0)
    text = ws.config_path.read_text().replace("  epochs: null", "  epochs: 3.0").replace("  alpha: null", "  alpha: 32")
    ws.config_path.write_text(text)
    hp = hyperparameters(load_workspace(ws.config_path), qwen, None)
    assert (hp["epochs"], hp["alpha"]) == (3.0, 32)  # 32 was the schema default; the user chose it here
    ws.config.student.epochs = 1.5
    assert hyperparameters(ws, qwen, None)["epochs"] == 1.5
    assert hyperparameters(ws, qwen, 4.0)["epochs"] == 4.0  # --epochs wins


def test_backend_selection_and_oom_message():
    from builder.train.backends import OOM_HELP, HFBackend, is_oom, select_backend
    from rag.errors import TrainingError

    assert isinstance(select_backend("hf"), HFBackend)
    with pytest.raises(TrainingError, match="auto, hf or unsloth"):
        select_backend("deepspeed")
    assert is_oom(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not is_oom(RuntimeError("shape mismatch"))
    for knob in ("batch_size", "grad_accum", "max_seq_len", "lora.r"):
        assert knob in OOM_HELP


def test_cuda_quantization_follows_bitsandbytes(monkeypatch, caplog):
    import builder.train.backends as be
    from rag.errors import TrainingError

    monkeypatch.setattr(be, "bitsandbytes_importable", lambda: True)
    assert be.cuda_quantization("auto") == "nf4"
    assert be.cuda_quantization("none") == "none"
    monkeypatch.setattr(be, "bitsandbytes_importable", lambda: False)
    with caplog.at_level("WARNING"):
        assert be.cuda_quantization("auto") == "none"  # trains without 4-bit, and says so
    assert "bitsandbytes is not installed" in caplog.text
    with pytest.raises(TrainingError, match="student.quantization: none"):
        be.cuda_quantization("nf4")
    assert be.select_backend("hf", "none").quantization == "none"
    with pytest.raises(TrainingError, match="--backend hf with student.quantization: none"):
        be.select_backend("unsloth", "none")
    monkeypatch.setattr(be, "cuda_available", lambda: True)
    monkeypatch.setattr(be, "unsloth_importable", lambda: True)
    assert be.select_backend("auto").name == "unsloth"
    assert be.select_backend("auto", "none").name == "hf"  # unsloth is 4-bit only
    from builder.families import get_family

    # no 4-bit: the registry's QLoRA VRAM estimate does not apply, so no preflight (OOM_HELP names the fixes)
    assert be.HFBackend("none").preflight(get_family("smollm2"), 4, 1024) is None
    assert "student.quantization: nf4" in be.OOM_HELP


def test_hub_base_offline_is_a_clear_error(tmp_path):
    from builder.train.base_model import resolve_base
    from rag.errors import TrainingError

    with pytest.raises(TrainingError, match="huggingface-cli download Qwen/Qwen2.5-3B-Instruct"):
        resolve_base(get_family("qwen"))  # conftest sets HF_HUB_OFFLINE=1
    with pytest.raises(TrainingError, match="no config.json"):
        resolve_base(get_family("qwen"), str(tmp_path))
