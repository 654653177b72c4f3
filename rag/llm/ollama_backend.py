"""Ollama backend through the official ``ollama`` client.

Host: ``ollama.host`` in the config, else $OLLAMA_HOST, else http://127.0.0.1:11434. The
context length is sent as ``options.num_ctx`` on every request, because Ollama's own default
(2048 or 4096 depending on version) silently cuts longer prompts from the front.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

from rag.errors import BackendError, OllamaUnavailable
from rag.llm.base import Message, approx_tokens, count_message_tokens

DEFAULT_HOST = "http://127.0.0.1:11434"


def resolve_host(configured: str | None = None) -> str:
    host = configured or os.environ.get("OLLAMA_HOST") or DEFAULT_HOST
    if "://" not in host:
        host = "http://" + host
    return host.rstrip("/")


def unavailable(host: str) -> OllamaUnavailable:
    return OllamaUnavailable(
        f"Ollama is not reachable at {host} - start it with 'ollama serve' or set ollama.host "
        "in raftsmith.yaml (or OLLAMA_HOST)"
    )


def make_client(host: str, timeout: float | None = 600.0) -> Any:
    import ollama

    return ollama.Client(host=host, timeout=timeout)


def call(host: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run one client call, turning connection failures into OllamaUnavailable with the fix."""
    import httpx
    import ollama

    try:
        return fn(*args, **kwargs)
    except (ConnectionError, httpx.ConnectError, httpx.ConnectTimeout) as err:
        from rag.netguard import blocked_cause

        blocked = blocked_cause(err)
        if blocked is not None:
            raise BackendError(str(blocked)) from None
        raise unavailable(host) from None
    except ollama.ResponseError as err:
        raise BackendError(f"Ollama at {host} answered {err.status_code}: {err.error}") from None


class OllamaBackend:
    name = "ollama"

    def __init__(self, model: str, *, host: str | None = None, num_ctx: int = 4096,
                 model_label: str | None = None, stop: Sequence[str] = ()) -> None:
        self.model = model
        self.host = resolve_host(host)
        self.context_length = num_ctx
        self.model_label = model_label or model
        self.default_stop = list(stop)
        self._client = make_client(self.host)

    def count_tokens(self, text: str) -> int:
        return approx_tokens(text)

    def prompt_tokens(self, messages: Sequence[Message]) -> int:
        return count_message_tokens(self, messages)

    def _options(self, max_tokens: int, temperature: float, stop: Sequence[str] | None) -> dict[str, Any]:
        opts: dict[str, Any] = {"num_ctx": self.context_length, "num_predict": max_tokens,
                                "temperature": temperature, "seed": 0}
        stops = list(dict.fromkeys([*self.default_stop, *(stop or [])]))
        if stops:
            opts["stop"] = stops
        return opts

    def chat(self, messages: Sequence[Message], *, max_tokens: int = 256, temperature: float = 0.0,
             stop: Sequence[str] | None = None, stream: bool = False) -> str | Iterator[str]:
        options = self._options(max_tokens, temperature, stop)
        msgs = [dict(m) for m in messages]
        if stream:
            return self._stream(msgs, options)
        resp = call(self.host, self._client.chat, model=self.model, messages=msgs, options=options, stream=False)
        return str(resp.message.content or "")

    def _stream(self, msgs: list[dict[str, str]], options: dict[str, Any]) -> Iterator[str]:
        parts = call(self.host, self._client.chat, model=self.model, messages=msgs, options=options, stream=True)
        import httpx

        try:
            for part in parts:
                piece = part.message.content
                if piece:
                    yield piece
        except (ConnectionError, httpx.ConnectError):
            raise unavailable(self.host) from None
