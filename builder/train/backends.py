"""Trainer backends behind one interface: ``hf`` (transformers + PEFT) and ``unsloth``.

Both produce a PEFT LoRA model and train it with the same transformers ``Trainer`` loop on
our own pre-masked examples (labels -100 outside assistant turns; see builder.train.data), so
the loss, checkpoints, resume and eval behave identically. The difference is loading:

- ``hf``: on CUDA, bitsandbytes 4-bit NF4 (QLoRA), or bf16/fp16 weights with
  ``student.quantization: none``; on CPU, the model in fp32 with plain LoRA.
- ``unsloth``: ``FastLanguageModel`` 4-bit QLoRA with its fused kernels (CUDA only).

``select_backend("auto")`` picks unsloth when CUDA is present and unsloth imports (and 4-bit is
not turned off), else hf.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from builder.families import Family, vram_estimate_gb
from rag.cpu import cpu_bf16_works
from rag.errors import TrainingError

log = logging.getLogger(__name__)

OOM_HELP = (
    "Training ran out of memory. Lower student.batch_size (raise student.grad_accum to keep "
    "the effective batch), lower student.max_seq_len, or lower student.lora.r; on CUDA, "
    "student.quantization: nf4 (4-bit QLoRA) takes the least memory; or pick a smaller student.family."
)


@dataclass
class LoraSpec:
    r: int
    alpha: int
    dropout: float
    rslora: bool
    target_modules: list[str]
    top_layers: int | None = None

    def layers_to_transform(self, n_layers: int) -> list[int] | None:
        """The layer indices LoRA goes on: all (None) or the top ``top_layers``."""
        if self.top_layers is None:
            return None
        if self.top_layers > n_layers:
            raise TrainingError(
                f"student.lora.top_layers is {self.top_layers} but the model has {n_layers} layers; "
                f"set it to at most {n_layers}, or remove it to adapt every layer."
            )
        return list(range(n_layers - self.top_layers, n_layers))


def text_config(model: Any) -> Any:
    """The model's (text) config: multimodal models keep the language model's under text_config."""
    cfg = getattr(model, "config", None)
    return getattr(cfg, "text_config", None) or cfg


def _n_layers(model: Any) -> int:
    cfg = text_config(model)
    n = getattr(cfg, "num_hidden_layers", None)
    if not isinstance(n, int):
        raise TrainingError("student.lora.top_layers needs a model whose config names num_hidden_layers; remove the setting.")
    return n


def cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001
        return False


def unsloth_importable() -> bool:
    try:
        import unsloth  # noqa: F401
    except Exception:  # noqa: BLE001 - unsloth raises many things when no GPU is present
        return False
    return True


class Backend(ABC):
    name: str = ""

    @abstractmethod
    def load(self, base_path: str, family: Family, lora: LoraSpec, max_seq_len: int, seed: int) -> tuple[Any, Any]:
        """(peft model ready to train, tokenizer)."""

    def load_for_resume(self, base_path: str, family: Family, lora: LoraSpec, max_seq_len: int, seed: int) -> tuple[Any, Any]:
        return self.load(base_path, family, lora, max_seq_len, seed)

    def training_precision(self, requested: str = "auto") -> dict[str, bool]:
        """bf16/fp16 flags for TrainingArguments.

        auto: on CUDA bf16 where supported, else fp16; on a CPU bf16 autocast where the CPU
        has native bf16 instructions (AVX512-BF16 or AMX-BF16) and a bf16 matmul runs in a
        child process (a CPU that lists an instruction the VM faults on kills the child, not
        this run), else fp32. The LoRA weights and the optimizer stay fp32 either way.
        """
        if requested == "fp32":
            return {"bf16": False, "fp16": False}
        if requested in ("bf16", "fp16"):
            return {"bf16": requested == "bf16", "fp16": requested == "fp16"}
        if not cuda_available():
            return {"bf16": cpu_bf16_works(), "fp16": False}
        import torch

        bf16 = bool(torch.cuda.is_bf16_supported())
        return {"bf16": bf16, "fp16": not bf16}

    def preflight(self, family: Family, batch_size: int, max_seq_len: int) -> dict[str, float] | None:
        """Compare free VRAM with the registry's QLoRA estimate; None on CPU."""
        if not cuda_available():
            return None
        import torch

        free, total = torch.cuda.mem_get_info()
        need = vram_estimate_gb(family, max_seq_len=max_seq_len, batch_size=batch_size)
        free_gb, total_gb = free / 2**30, total / 2**30
        if free_gb < need:
            raise TrainingError(
                f"Not enough GPU memory for {family.name}: about {need:.1f} GB needed (QLoRA estimate), "
                f"{free_gb:.1f} GB free of {total_gb:.1f} GB. Free the GPU, or lower student.batch_size / "
                "student.max_seq_len / student.lora.r, or pick a smaller student.family "
                "(qwen ~3.5 GB, smollm2 ~1 GB)."
            )
        return {"need_gb": need, "free_gb": round(free_gb, 1), "total_gb": round(total_gb, 1)}


def quiet_libraries(progress: bool) -> None:
    """Silence transformers' own bars (rich draws ours) and a deprecation warning peft triggers."""
    import warnings

    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    if not progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def _cpu_threads() -> None:
    """Honour RAFTSMITH_THREADS: on a shared/oversubscribed CPU one thread per process
    can be several times faster than torch's default (threads spin waiting on each other)."""
    import os

    import torch

    n = int(os.environ.get("RAFTSMITH_THREADS", "0") or 0)
    if n > 0:
        torch.set_num_threads(n)


def _ensure_pad(tokenizer: Any) -> None:
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token


def bitsandbytes_importable() -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken CUDA install raises more than ImportError
        return False
    return True


def cuda_quantization(requested: str) -> str:
    """'nf4' or 'none' for training on CUDA: student.quantization, with 'auto' resolved."""
    if requested == "nf4" and not bitsandbytes_importable():
        raise TrainingError("student.quantization is 'nf4' but bitsandbytes does not import; install it with "
                            "pip install 'raftsmith[gpu]' (or bitsandbytes), or set student.quantization: none.")
    if requested == "auto":
        if bitsandbytes_importable():
            return "nf4"
        log.warning("bitsandbytes is not installed: training LoRA over bf16/fp16 weights (more GPU memory than "
                    "4-bit QLoRA). Install raftsmith[gpu] for QLoRA, or set student.quantization: none to say so.")
        return "none"
    return requested


class HFBackend(Backend):
    name = "hf"

    def __init__(self, quantization: str = "auto") -> None:
        self.quantization = quantization  # student.quantization (CUDA only)
        self.quantized = False  # set by load(): the base was loaded in 4-bit
        self._resolved: str | None = None

    def cuda_quantization(self) -> str:
        if self._resolved is None:
            self._resolved = cuda_quantization(self.quantization)
        return self._resolved

    def preflight(self, family: Family, batch_size: int, max_seq_len: int) -> dict[str, float] | None:
        if cuda_available() and self.cuda_quantization() == "none":
            # the registry's estimates are for 4-bit QLoRA; an out-of-memory error names the fixes
            log.info("student.quantization is none: no VRAM preflight (the estimates are for 4-bit QLoRA)")
            return None
        return super().preflight(family, batch_size, max_seq_len)

    def load(self, base_path: str, family: Family, lora: LoraSpec, max_seq_len: int, seed: int) -> tuple[Any, Any]:
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.manual_seed(seed)
        tokenizer = AutoTokenizer.from_pretrained(base_path)
        _ensure_pad(tokenizer)
        if cuda_available():
            compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            self.quantized = self.cuda_quantization() == "nf4"
            if self.quantized:
                from peft import prepare_model_for_kbit_training
                from transformers import BitsAndBytesConfig

                quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                           bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute)
                model = AutoModelForCausalLM.from_pretrained(base_path, quantization_config=quant, device_map={"": 0})
                model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
            else:
                model = AutoModelForCausalLM.from_pretrained(base_path, dtype=compute, device_map={"": 0})
                # as QLoRA does (prepare_model_for_kbit_training): activations recomputed, not kept
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
                model.enable_input_require_grads()
        else:
            # CPU: fp32 weights; half precision on CPU is slow and numerically fragile for LoRA.
            _cpu_threads()
            model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
        layers = lora.layers_to_transform(_n_layers(model)) if lora.top_layers else None
        cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, use_rslora=lora.rslora,
                         target_modules=list(lora.target_modules), bias="none", task_type="CAUSAL_LM",
                         layers_to_transform=layers)
        return get_peft_model(model, cfg), tokenizer


class UnslothBackend(Backend):
    name = "unsloth"

    def load(self, base_path: str, family: Family, lora: LoraSpec, max_seq_len: int, seed: int) -> tuple[Any, Any]:
        if not cuda_available():
            raise TrainingError("The unsloth backend needs a CUDA GPU; use --backend hf on this machine.")
        try:
            from unsloth import FastLanguageModel
        except Exception as err:  # noqa: BLE001
            raise TrainingError(
                f"unsloth could not be imported ({type(err).__name__}: {err}). Install it with "
                "pip install 'raftsmith[gpu]', or use --backend hf."
            ) from None
        # Prefer the family's pre-quantized 4-bit checkpoint when the default base is used.
        model, tokenizer = FastLanguageModel.from_pretrained(
            model_name=base_path, max_seq_length=max_seq_len, load_in_4bit=True, dtype=None
        )
        _ensure_pad(tokenizer)
        layers = lora.layers_to_transform(_n_layers(model)) if lora.top_layers else None
        model = FastLanguageModel.get_peft_model(
            model, layers_to_transform=layers, r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules), use_rslora=lora.rslora, bias="none",
            use_gradient_checkpointing="unsloth", random_state=seed, max_seq_length=max_seq_len,
        )
        return model, tokenizer


def select_backend(requested: str = "auto", quantization: str = "auto") -> Backend:
    if requested == "auto":
        if cuda_available() and unsloth_importable() and quantization != "none":
            return UnslothBackend()
        return HFBackend(quantization)
    if requested == "hf":
        return HFBackend(quantization)
    if requested == "unsloth":
        if quantization == "none":
            raise TrainingError("The unsloth backend trains 4-bit QLoRA; use --backend hf with student.quantization: none.")
        return UnslothBackend()
    raise TrainingError(f"Unknown backend '{requested}'; use auto, hf or unsloth.")


def is_oom(err: BaseException) -> bool:
    name = type(err).__name__
    return name == "OutOfMemoryError" or "out of memory" in str(err).lower()
