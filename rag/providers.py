"""The teacher providers: one table that config, secrets, judge, teacher, CLI and bundle read.

A provider is an OpenAI-compatible API the teacher (``raftsmith generate``) and the judge
(``raftsmith eval --judge``) talk to: its default base URL (None: must be configured), the
environment variable that may hold its key, the structured-output style it takes, and extra
headers. ``none`` is not a provider: it means "no teacher" (reference answers only).

The names are also :data:`ProviderName` and :data:`StructuredStyle`, the ``Literal`` types the
config validates against; ``tests/unit/rag/test_registries.py`` checks that they agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "NO_TEACHER",
    "PROVIDERS",
    "STRUCTURED_STYLES",
    "TEACHER_CHOICES",
    "Provider",
    "ProviderName",
    "StructuredChoice",
    "StructuredStyle",
    "TeacherChoice",
    "key_env_vars",
]

ProviderName = Literal["openrouter", "openai", "openai-compatible", "ollama"]
TeacherChoice = Literal["none", "openrouter", "openai", "openai-compatible", "ollama"]
# How a provider is asked for JSON (builder.generate.teacher.STRUCTURED builds each).
StructuredStyle = Literal["json_schema", "json_object", "ollama", "off"]

NO_TEACHER = "none"
StructuredChoice = Literal["auto", StructuredStyle]  # auto: the provider's own style
STRUCTURED_STYLES: tuple[str, ...] = ("json_schema", "json_object", "ollama", "off")


@dataclass(frozen=True)
class Provider:
    name: str
    base_url: str | None  # None: must be configured (teacher.base_url / --base-url)
    env_var: str | None  # where a key may come from besides the keyring; None: no key needed
    structured: str  # the style used when teacher.structured is "auto"
    headers: tuple[tuple[str, str], ...] = ()


PROVIDERS: dict[str, Provider] = {
    p.name: p
    for p in (
        Provider("openrouter", "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY", "json_schema",
                 (("X-Title", "raftsmith"),)),
        Provider("openai", "https://api.openai.com/v1", "OPENAI_API_KEY", "json_schema"),
        Provider("openai-compatible", None, "OPENAI_API_KEY", "json_object"),
        Provider("ollama", None, None, "ollama"),
    )
}

#: what ``--teacher`` and ``teacher.provider`` accept, "none" first
TEACHER_CHOICES: tuple[str, ...] = (NO_TEACHER, *PROVIDERS)


def key_env_vars() -> list[str]:
    """Every environment variable that may hold a provider's key, sorted, once each."""
    return sorted({p.env_var for p in PROVIDERS.values() if p.env_var})
