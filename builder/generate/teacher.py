"""The teacher: an OpenAI-compatible chat client with structured output, retries and a cache.

Providers (``rag.providers.PROVIDERS``) and their structured-output styles (``STRUCTURED``)
are data, not branches: OpenRouter and OpenAI take ``json_schema``; llama.cpp's servers reject it and take
``{"type": "json_object", "schema": ...}``; Ollama takes its ``format`` (sent alongside its
OpenAI-style ``json_schema``). Replies are validated against the schema, with a tolerant
extraction from code fences as a fallback. Every reply is cached in SQLite under (provider,
model, prompt version, prompt hash, attempt), so a rerun makes zero calls.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.generate.privacy import PayloadLog, Redactor, is_loopback_url, require_local
from builder.generate.retry import decide, fatal_message
from rag.config import TeacherConfig, Workspace
from rag.errors import ConfigError, TeacherError
from rag.providers import PROVIDERS

log = logging.getLogger(__name__)

JSON_RETRIES = 2  # fresh attempts when a reply is not valid JSON for the schema


def _json_schema(schema: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    return {"type": "json_schema", "json_schema": {"name": "raftsmith", "schema": schema, "strict": False}}, None


def _json_object(schema: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    return {"type": "json_object", "schema": schema}, None


def _ollama(schema: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    rf, _ = _json_schema(schema)
    return rf, {"format": schema}


def _off(schema: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    return None, None


# style -> (response_format, extra_body) builder
STRUCTURED: dict[str, Callable[[dict[str, Any]], tuple[dict[str, Any] | None, dict[str, Any] | None]]] = {
    "json_schema": _json_schema,
    "json_object": _json_object,
    "ollama": _ollama,
    "off": _off,
}


# ---------------------------------------------------------------- parsing


def extract_json(text: str) -> Any:
    """Parse a JSON reply: the whole text, else a ```json fence, else the first {...} object."""
    text = text.strip()
    try:
        return json.loads(text)
    except ValueError:
        pass
    for m in re.finditer(r"```(?:json|JSON)?\s*\n?(.*?)```", text, re.DOTALL):
        try:
            return json.loads(m.group(1).strip())
        except ValueError:
            continue
    dec = json.JSONDecoder()
    for i, ch in enumerate(text):
        if ch == "{":
            try:
                obj, _ = dec.raw_decode(text[i:])
                return obj
            except ValueError:
                continue
    raise ValueError("no JSON object in the reply")


_VALIDATORS: dict[str, Any] = {}


def _validator(schema: dict[str, Any]) -> Any:
    """A checked, compiled validator per schema (jsonschema.validate re-checks the schema every call)."""
    key = json.dumps(schema, sort_keys=True)
    v = _VALIDATORS.get(key)
    if v is None:
        import jsonschema

        cls = jsonschema.validators.validator_for(schema)
        cls.check_schema(schema)
        v = _VALIDATORS[key] = cls(schema)
    return v


def parse_reply(text: str, schema: dict[str, Any]) -> dict[str, Any]:
    data = extract_json(text)
    _validator(schema).validate(data)
    if not isinstance(data, dict):
        raise ValueError("reply is not a JSON object")
    return data


# ---------------------------------------------------------------- cache


class TeacherCache:
    """SQLite: (provider, model, prompt_version, prompt_hash, attempt) -> reply text + usage."""

    def __init__(self, path: Path | None):
        self.path = path
        self._lock = threading.Lock()
        if path is None:
            self._db = None
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable at checkpoints, no fsync per reply
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS replies (provider TEXT, model TEXT, prompt_version TEXT, prompt_hash TEXT,"
            " attempt TEXT, text TEXT, prompt_tokens INTEGER, completion_tokens INTEGER, created REAL,"
            " PRIMARY KEY (provider, model, prompt_version, prompt_hash, attempt))"
        )
        self._db.commit()

    # One connection, used by one thread at a time: every touch of it, close included, holds
    # the lock. Closing a sqlite3 connection while another thread is inside execute() on it
    # frees memory that thread is using (a SIGSEGV in generate, once). A put or get that
    # comes after close() finds no connection and does nothing.
    def get(self, key: tuple[str, str, str, str, str]) -> tuple[str, int, int] | None:
        with self._lock:
            if self._db is None:
                return None
            row = self._db.execute(
                "SELECT text, prompt_tokens, completion_tokens FROM replies WHERE provider=? AND model=? AND"
                " prompt_version=? AND prompt_hash=? AND attempt=?", key
            ).fetchone()
        return None if row is None else (row[0], int(row[1]), int(row[2]))

    def put(self, key: tuple[str, str, str, str, str], text: str, p_tok: int, c_tok: int) -> bool:
        """Store a reply; False when the cache is closed (or has no file)."""
        with self._lock:
            if self._db is None:
                if self.path is not None:
                    log.debug("teacher cache closed before a reply could be stored; it will be asked again on rerun")
                return False
            self._db.execute("INSERT OR REPLACE INTO replies VALUES (?,?,?,?,?,?,?,?,?)", (*key, text, p_tok, c_tok, time.time()))
            self._db.commit()
            return True

    def close(self) -> None:
        """Close once any write in flight has finished (it holds the lock until committed)."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


# ---------------------------------------------------------------- client


@dataclass
class TeacherStats:
    calls: int = 0
    cache_hits: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    payloads_sent: int = 0
    redactions: dict[str, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)


@dataclass
class TeacherReply:
    data: dict[str, Any]
    text: str
    cached: bool


def teacher_error(msg: str, *, fatal: bool, reason: str) -> TeacherError:
    err = TeacherError(msg)
    err.fatal = fatal  # type: ignore[attr-defined]
    err.reason = reason  # type: ignore[attr-defined]
    return err


class OpenAITeacher:
    """A teacher behind any OpenAI-compatible endpoint (openai SDK, our own retry policy).

    ``config`` is the teacher section (provider, model, temperature, timeout, retries, prices,
    structured style); the rest is what only the caller knows: where the server is, the key,
    and the cache, redaction and payload log to use.
    """

    def __init__(
        self,
        config: TeacherConfig,
        *,
        base_url: str,
        api_key: str,
        cache: TeacherCache | None = None,
        redactor: Redactor | None = None,
        payload_log: PayloadLog | None = None,
        backoff_base: float = 0.5,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ):
        import openai

        spec = PROVIDERS.get(config.provider)
        if spec is None:
            raise ConfigError(f"Unknown teacher provider '{config.provider}'; use one of {', '.join(PROVIDERS)}.")
        structured = spec.structured if config.structured == "auto" else config.structured
        if structured not in STRUCTURED:
            raise ConfigError(f"teacher.structured '{structured}' is unknown; use one of {', '.join(STRUCTURED)} or auto.")
        self.config = config
        self.provider, self.model, self.base_url = config.provider, config.model, base_url
        self.structured = structured
        self.temperature, self.max_retries = config.temperature, config.max_retries
        self.price_in, self.price_out = config.price_in_per_mtok, config.price_out_per_mtok
        self.cache = cache or TeacherCache(None)
        self.redactor = redactor
        self.payload_log = payload_log or PayloadLog(None)
        self.backoff_base = backoff_base
        self._sleep = sleep
        self.stats = TeacherStats()
        self.json_retries = JSON_RETRIES
        self._client = openai.AsyncOpenAI(
            base_url=base_url, api_key=api_key, timeout=config.timeout_s, max_retries=0,
            default_headers=dict(spec.headers) or None,
        )

    async def aclose(self) -> None:
        await self._client.close()
        self.cache.close()

    def _cost(self, p: int, c: int) -> float:
        return p * self.price_in / 1e6 + c * self.price_out / 1e6

    async def complete_json(
        self,
        messages: list[dict[str, str]],
        schema: dict[str, Any],
        *,
        prompt_version: str,
        max_tokens: int = 600,
        attempt: int = 0,
        tag: str = "",
    ) -> TeacherReply:
        """A schema-valid JSON reply; TeacherError(fatal=False) when every try was invalid."""
        last = ""
        msgs = messages
        for j in range(self.json_retries + 1):
            if j:
                # the same request at the same temperature would fail the same way: say what went wrong
                msgs = [*messages, {"role": "user", "content": f"Your previous reply was not valid JSON for the schema ({last[:120]}). "
                                    "Reply again with one short JSON object only."}]
            text, cached, restore = await self._text(msgs, schema, prompt_version, max_tokens, f"{attempt}.{j}", tag)
            try:
                data = parse_reply(text, schema)
            except Exception as err:  # noqa: BLE001 - jsonschema/ValueError: an invalid reply, retried
                last = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
                self.stats.failures["invalid_json"] = self.stats.failures.get("invalid_json", 0) + 1
                log.debug("teacher reply for %s is not valid JSON for the schema (%s)", tag, last)
                continue
            return TeacherReply(data=restore(data), text=text, cached=cached)
        raise teacher_error(f"the teacher's replies for {tag} were not valid JSON for the schema ({last})", fatal=False, reason="invalid_json")

    async def _text(
        self, messages: list[dict[str, str]], schema: dict[str, Any], prompt_version: str, max_tokens: int, attempt: str, tag: str
    ) -> tuple[str, bool, Callable[[Any], Any]]:
        sent = [dict(m) for m in messages]
        sent[0] = {**sent[0], "content": sent[0]["content"] + "\nThe JSON must match this schema: " + json.dumps(schema, separators=(",", ":"))}
        restore: Callable[[Any], Any] = lambda d: d  # noqa: E731
        counts: dict[str, int] = {}
        if self.redactor is not None:
            sent, red = self.redactor.redact_messages(sent)
            counts = red.counts
            if red.mapping:
                def restore(d: Any) -> Any:
                    return json.loads(red.restore(json.dumps(d, ensure_ascii=False)))
        response_format, extra_body = STRUCTURED[self.structured](schema)
        payload: dict[str, Any] = {"model": self.model, "messages": sent, "temperature": self.temperature, "max_tokens": max_tokens}
        if response_format is not None:
            payload["response_format"] = response_format
        prompt_hash = hashlib.sha256(json.dumps([payload, extra_body], sort_keys=True, ensure_ascii=False).encode()).hexdigest()
        key = (self.provider, self.model, prompt_version, prompt_hash, attempt)
        hit = self.cache.get(key)
        if hit is not None:
            self.stats.cache_hits += 1
            return hit[0], True, restore
        text, p_tok, c_tok = await self._call(payload, extra_body, tag)
        for k, v in counts.items():
            self.stats.redactions[k] = self.stats.redactions.get(k, 0) + v
        self.stats.payloads_sent += 1

        def persist() -> None:  # disk syncs off the event loop: other requests keep flowing
            self.payload_log.record(payload, counts, tag)
            self.cache.put(key, text, p_tok, c_tok)

        await asyncio.to_thread(persist)
        return text, False, restore

    async def _call(self, payload: dict[str, Any], extra_body: dict[str, Any] | None, tag: str) -> tuple[str, int, int]:
        import openai

        for n in range(self.max_retries + 1):
            self.stats.calls += 1
            status: int | None = None
            headers: dict[str, str] = {}
            failure: str | None = None
            try:
                resp = await self._client.chat.completions.create(**payload, extra_body=extra_body)
                choice = resp.choices[0] if resp.choices else None
                text = choice.message.content if choice is not None and choice.message is not None else None
                if text is None:
                    raise ValueError("reply has no message content")
                usage = resp.usage
                p_tok = int(getattr(usage, "prompt_tokens", 0) or 0)
                c_tok = int(getattr(usage, "completion_tokens", 0) or 0)
                self.stats.prompt_tokens += p_tok
                self.stats.completion_tokens += c_tok
                self.stats.cost_usd += self._cost(p_tok, c_tok)
                return text, p_tok, c_tok
            except openai.APIStatusError as err:
                status = err.status_code
                headers = {k.lower(): v for k, v in err.response.headers.items()}
            except openai.APITimeoutError:
                failure = "timeout"
            except openai.APIConnectionError:
                failure = "connection"
            except (ValueError, TypeError, AttributeError, IndexError, openai.APIResponseValidationError):
                failure = "malformed"
            d = decide(attempt=n, max_retries=self.max_retries, status=status, headers=headers, failure=failure, base=self.backoff_base)
            self.stats.failures[d.reason] = self.stats.failures.get(d.reason, 0) + 1
            if not d.retry:
                if status is not None and status < 500 and status not in (408, 409, 425, 429):
                    raise teacher_error(f"{self.provider} teacher at {self.base_url}: {fatal_message(status)}.", fatal=True, reason=d.reason)
                raise teacher_error(
                    f"{self.provider} teacher at {self.base_url} kept failing ({d.reason}) after {n + 1} attempts for {tag}; "
                    "check the server, or rerun later: finished rows are kept and the run resumes.",
                    fatal=False, reason=f"gave_up_{d.reason}",
                )
            self.stats.retries += 1
            log.debug("teacher %s: %s, retry %d in %.2fs", tag, d.reason, n + 1, d.delay)
            await self._sleep(d.delay)
        raise AssertionError("unreachable")


def make_teacher(
    ws: Workspace,
    provider: str,
    *,
    model: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    local_only: bool = False,
) -> OpenAITeacher:
    """The configured teacher, with its key from option -> keyring -> env var (none on loopback)."""
    from rag.secrets import get_key

    tc = ws.config.teacher
    spec = PROVIDERS.get(provider)
    if spec is None:
        raise ConfigError(f"Unknown teacher provider '{provider}'; use one of none, {', '.join(PROVIDERS)}.")
    url = base_url or tc.base_url or spec.base_url
    if provider == "ollama" and url is None:
        import os

        host = ws.config.ollama.host or os.environ.get("OLLAMA_HOST") or "http://127.0.0.1:11434"
        url = (host if "://" in host else f"http://{host}").rstrip("/") + "/v1"
    if url is None:
        raise ConfigError(f"The {provider} teacher needs a base URL: pass --base-url http://HOST:PORT/v1 or set teacher.base_url.")
    if local_only:
        require_local(url, provider)
    if is_loopback_url(url):
        import os

        key = api_key or (os.environ.get(spec.env_var) if spec.env_var else None) or "no-key-needed"
    else:
        key = get_key(tc.key_name or provider, explicit=api_key, env_var=spec.env_var)  # type: ignore[assignment]
    return OpenAITeacher(
        tc.model_copy(update={"provider": provider, "model": model or tc.model}), base_url=url, api_key=str(key),
        cache=TeacherCache(ws.state_dir / "teacher_cache.sqlite"),
        redactor=Redactor(tc.deny_list, patterns=tc.redact) if (tc.redact or tc.deny_list) else None,
        payload_log=PayloadLog(ws.state_dir / "teacher_payloads.jsonl"),
    )
