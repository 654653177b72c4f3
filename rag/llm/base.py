"""The one interface every chat backend implements.

``chat(messages, stream=False)`` returns the whole reply as a string; ``stream=True`` returns
an iterator of text pieces (what a terminal or an SSE stream prints as it arrives). Backends
also say how long their context is and how many tokens a text costs, so the answering code
can fit retrieved chunks into the window instead of letting the server cut the prompt.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

Message = dict[str, str]

# Chat templates add a few tokens per message (role markers, separators); counted on top
# of the content so budgeting stays on the safe side for chatml, llama3, phi and mistral.
PER_MESSAGE_OVERHEAD = 8


@runtime_checkable
class ChatBackend(Protocol):
    name: str  # "llama-cpp" | "ollama" | "openai"
    model_label: str  # what the user asked for, e.g. "tuned (kestrel-smollm2)"
    context_length: int  # tokens the model sees at once (num_ctx)

    def chat(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        stop: Sequence[str] | None = None,
        stream: bool = False,
    ) -> str | Iterator[str]: ...

    def count_tokens(self, text: str) -> int: ...

    def prompt_tokens(self, messages: Sequence[Message]) -> int:
        """Tokens the whole rendered prompt occupies (exact where the backend can tell)."""
        ...


def approx_tokens(text: str) -> int:
    """A conservative token estimate for servers that expose no tokenizer (~3 chars/token)."""
    return max(1, (len(text) + 2) // 3)


def count_message_tokens(backend: ChatBackend, messages: Sequence[Message]) -> int:
    return sum(backend.count_tokens(m.get("content", "")) + PER_MESSAGE_OVERHEAD for m in messages)


def collect(reply: str | Iterator[str]) -> str:
    return reply if isinstance(reply, str) else "".join(reply)
