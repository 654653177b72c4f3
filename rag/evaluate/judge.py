"""Optional LLM judge for ``raftsmith eval --judge``: the teacher model grades each answer.

It uses the workspace's teacher settings (provider, model, base_url, key from the keyring)
through any OpenAI-compatible API. It only runs when asked and configured; offline laptops
skip it. Grades are 0..1 with a one-line reason; an unparseable grade is recorded as an error
for that row, never guessed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from rag.config import Workspace
from rag.errors import ConfigError
from rag.providers import PROVIDERS

PROMPT = (
    "You grade a domain assistant. Question: {question}\nReference answer: {reference}\n"
    "Assistant answer: {answer}\n\nDoes the assistant's answer state the reference fact correctly "
    "(for a null reference: does it correctly decline to answer)? Reply with JSON only: "
    '{{"score": <number 0..1>, "reason": "<one sentence>"}}'
)


def parse_grade(text: str) -> tuple[float, str]:
    """(score, reason) from a judge reply; ValueError when there is no usable grade."""
    for m in re.finditer(r"\{.*?\}", text, flags=re.DOTALL):
        try:
            obj = json.loads(m.group(0))
        except ValueError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("score"), (int, float)) and not isinstance(obj["score"], bool):
            score = float(obj["score"])
            if 0.0 <= score <= 1.0:
                return score, str(obj.get("reason", ""))[:300]
    raise ValueError(f"no JSON grade with a score between 0 and 1 in the judge's reply: {text[:120]!r}")


def make_judge_client(ws: Workspace) -> tuple[Any, str]:
    tc = ws.config.teacher
    if tc.provider == "none":
        raise ConfigError("--judge needs a teacher: set teacher.provider/model (and base_url for local servers) in raftsmith.yaml.")
    base_url = tc.base_url or PROVIDERS[tc.provider].base_url
    if not base_url:
        raise ConfigError(f"teacher.base_url is required for provider '{tc.provider}' (e.g. http://127.0.0.1:8000/v1).")
    from rag.netguard import is_loopback_url
    from rag.secrets import get_key

    # a local teacher (llama.cpp server, Ollama on loopback) needs no key: do not touch the keyring
    key = "not-needed" if is_loopback_url(base_url) else get_key(tc.key_name or tc.provider)
    import openai

    return openai.OpenAI(base_url=base_url, api_key=key, timeout=tc.timeout_s, max_retries=2), tc.model


def judge_rows(ws: Workspace, rows: Sequence[dict[str, Any]]) -> None:
    """Add row["judge"] = {"score", "reason"} or {"error"} to each evaluated row, in place."""
    import openai

    client, model = make_judge_client(ws)
    for r in rows:
        prompt = PROMPT.format(question=r["question"], reference=r.get("reference"), answer=r.get("answer") or "")
        try:
            resp = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                                  temperature=0.0, max_tokens=200)
            score, reason = parse_grade(resp.choices[0].message.content or "")
            r["judge"] = {"score": score, "reason": reason}
        except (ValueError, openai.OpenAIError) as err:
            r["judge"] = {"error": str(err)[:300]}
