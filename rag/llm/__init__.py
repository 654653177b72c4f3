"""Chat backends behind one interface: in-process llama.cpp, Ollama, any OpenAI-compatible server."""

from __future__ import annotations

from rag.llm.base import ChatBackend, Message, approx_tokens

__all__ = ["ChatBackend", "Message", "approx_tokens"]
