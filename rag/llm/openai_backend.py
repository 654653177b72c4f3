"""Any OpenAI-compatible chat server (vLLM, llama.cpp server, LM Studio, Ollama's /v1, OpenAI)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

from rag.errors import BackendError, ConfigError
from rag.llm.base import Message, approx_tokens, count_message_tokens


class OpenAIBackend:
    name = "openai"

    def __init__(self, model: str, *, base_url: str | None, api_key: str | None = None,
                 num_ctx: int = 4096, model_label: str | None = None, stop: Sequence[str] = (),
                 timeout: float = 600.0) -> None:
        if not base_url:
            raise ConfigError("The openai backend needs chat.base_url in raftsmith.yaml, e.g. http://127.0.0.1:8000/v1")
        import openai

        self.model = model
        self.base_url = base_url
        self.context_length = num_ctx
        self.model_label = model_label or model
        self.default_stop = list(stop)
        key = api_key or os.environ.get("OPENAI_API_KEY") or "not-needed"
        self._client = openai.OpenAI(base_url=base_url, api_key=key, timeout=timeout, max_retries=1)

    def count_tokens(self, text: str) -> int:
        return approx_tokens(text)

    def prompt_tokens(self, messages: Sequence[Message]) -> int:
        return count_message_tokens(self, messages)

    def _kwargs(self, messages: Sequence[Message], max_tokens: int, temperature: float,
                stop: Sequence[str] | None) -> dict[str, Any]:
        stops = list(dict.fromkeys([*self.default_stop, *(stop or [])]))[:4]  # the API allows 4
        kw: dict[str, Any] = {"model": self.model, "messages": [dict(m) for m in messages],
                              "max_tokens": max_tokens, "temperature": temperature}
        if stops:
            kw["stop"] = stops
        return kw

    def chat(self, messages: Sequence[Message], *, max_tokens: int = 256, temperature: float = 0.0,
             stop: Sequence[str] | None = None, stream: bool = False) -> str | Iterator[str]:
        kw = self._kwargs(messages, max_tokens, temperature, stop)
        if stream:
            return self._stream(kw)
        resp = self._guard(lambda: self._client.chat.completions.create(**kw))
        return str(resp.choices[0].message.content or "")

    def _stream(self, kw: dict[str, Any]) -> Iterator[str]:
        events = self._guard(lambda: self._client.chat.completions.create(stream=True, **kw))
        for ev in events:
            if ev.choices and ev.choices[0].delta and ev.choices[0].delta.content:
                yield ev.choices[0].delta.content

    def _guard(self, fn: Any) -> Any:
        import openai

        try:
            return fn()
        except openai.APIConnectionError as err:
            from rag.netguard import blocked_cause

            blocked = blocked_cause(err)
            if blocked is not None:
                raise BackendError(str(blocked)) from None
            raise BackendError(f"The OpenAI-compatible server at {self.base_url} is not reachable; start it or fix chat.base_url.") from None
        except openai.APIStatusError as err:
            raise BackendError(f"The server at {self.base_url} answered {err.status_code}: {err.message}") from None
