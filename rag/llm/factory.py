"""Pick and build the chat backend for a resolved model; heavy libraries load only here."""

from __future__ import annotations

from rag.config import Workspace
from rag.errors import ConfigError
from rag.llm.base import ChatBackend
from rag.llm.resolve import ModelRef


def make_backend(ws: Workspace, model_ref: ModelRef) -> ChatBackend:
    cfg = ws.config
    num_ctx = cfg.chat.num_ctx
    if model_ref.backend == "llama-cpp":
        from rag.llm.llama_cpp_backend import LlamaCppBackend

        assert model_ref.path is not None
        return LlamaCppBackend(model_ref.path, lora_path=model_ref.adapter_path, n_ctx=num_ctx,
                               model_label=model_ref.label, stop=model_ref.stop)
    if model_ref.backend == "ollama":
        from rag.llm.ollama_backend import OllamaBackend

        assert model_ref.remote_name is not None
        return OllamaBackend(model_ref.remote_name, host=cfg.ollama.host, num_ctx=num_ctx,
                             model_label=model_ref.label, stop=model_ref.stop)
    if model_ref.backend == "openai":
        from rag.llm.openai_backend import OpenAIBackend

        assert model_ref.remote_name is not None
        return OpenAIBackend(model_ref.remote_name, base_url=cfg.chat.base_url, num_ctx=num_ctx,
                             model_label=model_ref.label, stop=model_ref.stop)
    raise ConfigError(f"Unknown backend '{model_ref.backend}': use llama-cpp, ollama or openai (chat.backend).")
