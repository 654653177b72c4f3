"""In-process llama.cpp backend (llama-cpp-python): the embedded default when Ollama is absent.

The prompt is rendered by the GGUF's own chat template (``create_chat_completion`` with no
``chat_format`` picks up ``tokenizer.chat_template`` from the file), so a tuned export and
its base are prompted exactly as they were trained. Loaded models are cached per
(path, adapter, n_ctx): a chat session switching base <-> tuned loads each file once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from rag.errors import BackendError, ConfigError, IntegrityError
from rag.llm.base import Message

log = logging.getLogger(__name__)

_CACHE: dict[tuple[str, str | None, int], Any] = {}
_CACHE_LOCK = threading.Lock()
_MODEL_LOCKS: dict[int, threading.Lock] = {}


def physical_cores() -> int:
    """Physical cores (psutil when installed), else half the logical CPUs as llama.cpp assumes.

    On a 2-vCPU machine token generation ran 1.36x faster on 2 threads than on 1
    (benchmarks/threads.py), so guessing "half" where the cores are not hyperthreads is costly.
    """
    try:
        import psutil

        n = psutil.cpu_count(logical=False)
        if n:
            return max(1, int(n))
    except Exception:  # noqa: BLE001 - psutil missing or unable to read the topology
        pass
    return max(1, (os.cpu_count() or 2) // 2)


def load_llama(model_path: Path, lora_path: Path | None = None, n_ctx: int = 4096) -> Any:
    """Load (once) a GGUF with an optional LoRA adapter GGUF; n_ctx is capped at the trained length."""
    try:
        from llama_cpp import Llama
    except ImportError:  # pragma: no cover - depends on the install
        raise ConfigError("llama-cpp-python is not installed: pip install 'raftsmith[rag]'") from None
    if not model_path.is_file():
        raise ConfigError(f"Model file {model_path} does not exist; run 'raftsmith export' or fix chat.base_gguf.")
    if lora_path is not None and not lora_path.is_file():
        raise ConfigError(f"Adapter file {lora_path} does not exist; rerun 'raftsmith export' with export.adapter: true.")
    key = (str(model_path.resolve()), str(lora_path.resolve()) if lora_path else None, n_ctx)
    with _CACHE_LOCK:
        llm = _CACHE.get(key)
        if llm is None:
            # Token-by-token generation runs best on one thread per physical core (hyperthread
            # siblings only contend); prompt processing is one big batch and uses every core.
            env_threads = int(os.environ.get("RAFTSMITH_THREADS", "0") or 0)
            threads = env_threads or physical_cores()
            batch_threads = env_threads or max(1, os.cpu_count() or 1)
            try:
                with _quiet_native_stderr():  # llama.cpp logs LoRA/buffer details from C, bypassing verbose
                    llm = Llama(
                        model_path=key[0],
                        lora_path=key[1],
                        n_ctx=n_ctx,
                        n_threads=threads,
                        n_threads_batch=batch_threads,
                        seed=0,
                        verbose=False,
                    )
            except (ValueError, RuntimeError) as err:
                raise BackendError(f"llama.cpp could not load {model_path}: {err}. Is it a valid GGUF file?") from None
            trained = _trained_context(llm)
            if trained and n_ctx > trained:
                log.info("n_ctx %d exceeds the trained context %d of %s; using %d", n_ctx, trained, model_path.name, trained)
                del llm
                with _quiet_native_stderr():
                    llm = Llama(model_path=key[0], lora_path=key[1], n_ctx=trained, n_threads=threads,
                                n_threads_batch=batch_threads, seed=0, verbose=False)
            _CACHE[key] = llm
            _MODEL_LOCKS[id(llm)] = threading.Lock()
        return llm


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (C-level logging) unless RAFTSMITH_DEBUG is set."""
    if os.environ.get("RAFTSMITH_DEBUG", "") not in ("", "0"):
        yield
        return
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _trained_context(llm: Any) -> int | None:
    for k, v in (llm.metadata or {}).items():
        if k.endswith(".context_length"):
            try:
                return int(v)
            except ValueError:
                return None
    return None


@contextlib.contextmanager
def chat_template_guard(model_label: str) -> Iterator[None]:
    """A GGUF's chat template that the Jinja sandbox stops becomes an IntegrityError.

    llama-cpp-python renders ``tokenizer.chat_template`` in jinja2's immutable sandbox; a
    template that reaches for Python internals or mutates objects raises SecurityError, which
    says the file is crafted, not that raftsmith has a bug.
    """
    try:
        yield
    except Exception as err:
        from jinja2.exceptions import SecurityError

        if isinstance(err, SecurityError):
            raise IntegrityError(
                f"The chat template inside {model_label} tried an operation the Jinja sandbox forbids ({err}); "
                "the GGUF is crafted or damaged. Use a GGUF from a trusted export ('raftsmith export' or a "
                "verified bundle) or download the model again."
            ) from None
        raise


def clear_cache() -> None:
    with _CACHE_LOCK:
        _CACHE.clear()
        _MODEL_LOCKS.clear()


class LlamaCppBackend:
    name = "llama-cpp"

    def __init__(self, model_path: Path, *, lora_path: Path | None = None, n_ctx: int = 4096,
                 model_label: str | None = None, stop: Sequence[str] = ()) -> None:
        self.model_path = Path(model_path)
        self.lora_path = Path(lora_path) if lora_path else None
        self._llm = load_llama(self.model_path, self.lora_path, n_ctx)
        self._lock = _MODEL_LOCKS[id(self._llm)]
        self.context_length = int(self._llm.n_ctx())
        self.model_label = model_label or self.model_path.name
        self.default_stop = list(stop)
        self._formatter: Any = None

    @contextlib.contextmanager
    def threads(self, n: int) -> Iterator[None]:
        """Generate and process prompts on ``n`` threads inside the block (eval runs models side by side)."""
        params = self._llm.context_params
        before = (int(params.n_threads), int(params.n_threads_batch))
        with self._lock:
            self._llm._ctx.set_n_threads(n, n)
        try:
            yield
        finally:
            with self._lock:
                self._llm._ctx.set_n_threads(*before)

    def count_tokens(self, text: str) -> int:
        return len(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` as plain text (no BOS, special-token markup not parsed)."""
        return [int(t) for t in self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)]

    def render_prompt(self, messages: Sequence[Message]) -> str | None:
        """The exact prompt text the GGUF's chat template makes of ``messages`` (None: no template)."""
        template = (self._llm.metadata or {}).get("tokenizer.chat_template")
        if not template:
            return None
        if self._formatter is None:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            model = self._llm._model
            eos, bos = self._llm.token_eos(), self._llm.token_bos()
            self._formatter = Jinja2ChatFormatter(
                template=template,
                eos_token=model.token_get_text(eos) if eos != -1 else "",
                bos_token=model.token_get_text(bos) if bos != -1 else "",
            )
        with chat_template_guard(self.model_label):
            return str(self._formatter(messages=[dict(m) for m in messages]).prompt)

    def prompt_tokens(self, messages: Sequence[Message]) -> int:
        """Tokens the rendered prompt occupies in the context (exact when the GGUF has a template)."""
        prompt = self.render_prompt(messages)
        if prompt is None:
            from rag.llm.base import count_message_tokens

            return count_message_tokens(self, messages)
        return len(self._llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True))

    def next_token_logits(self, prompt: str) -> Any:
        """Logits (float32 numpy vector over the vocabulary) of the token that follows ``prompt``.

        ``prompt`` is rendered text (special tokens are parsed, a BOS is added). The KV cache
        of a prefix shared with the previous evaluation is reused, so scoring many passages
        after one fixed instruction re-reads only what differs. Used by the llm reranker.
        """
        import numpy as np

        tokens = self._llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        if len(tokens) >= self.context_length:
            raise BackendError(f"a prompt of {len(tokens)} tokens does not fit the context of {self.context_length}")
        with self._lock:
            llm = self._llm
            seen = llm.input_ids[: llm.n_tokens]
            same = 0
            for a, b in zip(seen, tokens, strict=False):
                if int(a) != b:
                    break
                same += 1
            llm.n_tokens = min(same, len(tokens) - 1)  # at least one token is evaluated: its logits are read
            llm.eval(tokens[llm.n_tokens:])
            return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).copy()

    def chat(self, messages: Sequence[Message], *, max_tokens: int = 256, temperature: float = 0.0,
             stop: Sequence[str] | None = None, stream: bool = False) -> str | Iterator[str]:
        stops = list(dict.fromkeys([*self.default_stop, *(stop or [])]))
        kwargs: dict[str, Any] = {
            "messages": [dict(m) for m in messages],
            "max_tokens": max_tokens,
            "temperature": temperature,
            "stop": stops or None,
            "seed": 0,
        }
        if stream:
            return self._stream(kwargs)
        with self._lock, chat_template_guard(self.model_label):
            try:
                out = self._llm.create_chat_completion(**kwargs)
            except ValueError as err:  # e.g. prompt longer than the context
                raise BackendError(f"llama.cpp refused the request: {err}") from None
        return str(out["choices"][0]["message"].get("content") or "")

    def _stream(self, kwargs: dict[str, Any]) -> Iterator[str]:
        with self._lock, chat_template_guard(self.model_label):
            try:
                chunks = self._llm.create_chat_completion(stream=True, **kwargs)
                for part in chunks:
                    piece = part["choices"][0].get("delta", {}).get("content")
                    if piece:
                        yield piece
            except ValueError as err:
                raise BackendError(f"llama.cpp refused the request: {err}") from None
