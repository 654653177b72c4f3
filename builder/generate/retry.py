"""Retry decisions for teacher calls, as data: what failed -> wait and retry, or stop.

* 429: honor ``Retry-After`` (seconds or an HTTP date), capped; backoff when absent.
* 5xx, 408, 409, timeouts, dropped connections, malformed bodies: exponential backoff with
  full jitter, bounded by ``max_retries``.
* 400/401/402/403/404/422: never retried; a TeacherError that says what to do (402 means the
  account is out of credits).
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass

FATAL_MESSAGES: dict[int, str] = {
    400: "the teacher rejected the request as invalid (400); check teacher.model and teacher.structured",
    401: "the teacher rejected the API key (401); store a valid one with 'raftsmith keys set PROVIDER' or the provider's env var",
    402: "the teacher account is out of credits (402); add credits at the provider, or lower the run with --limit",
    403: "the teacher refused access (403); the key lacks permission for this model or the request was moderated",
    404: "the teacher does not know this model or endpoint (404); check teacher.model and teacher.base_url",
    422: "the teacher could not process the request (422); check teacher.structured for this server",
}
RETRYABLE_STATUS = frozenset({408, 409, 425, 429})


@dataclass(frozen=True)
class Decision:
    retry: bool
    delay: float
    reason: str  # "rate_limited", "server_error", "timeout", "connection", "malformed", "http_401", ...


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date)."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff(attempt: int, base: float = 0.5, cap: float = 30.0, rng: random.Random | None = None) -> float:
    """Full-jitter exponential backoff: uniform(0, min(cap, base * 2**attempt))."""
    r = rng or random
    return r.uniform(0, min(cap, base * (2**attempt)))


def decide(
    *,
    attempt: int,
    max_retries: int,
    status: int | None = None,
    headers: Mapping[str, str] | None = None,
    failure: str | None = None,
    base: float = 0.5,
    cap: float = 30.0,
    retry_after_cap: float = 120.0,
    rng: random.Random | None = None,
) -> Decision:
    """Whether attempt number ``attempt`` (0-based) that failed should be retried, and after how long.

    ``failure`` names a non-HTTP failure: "timeout", "connection" or "malformed".
    """
    if status is not None:
        reason = "rate_limited" if status == 429 else ("server_error" if status >= 500 else f"http_{status}")
        if status >= 500 or status in RETRYABLE_STATUS:
            if attempt >= max_retries:
                return Decision(False, 0.0, reason)
            if status == 429:
                ra = parse_retry_after((headers or {}).get("retry-after") or (headers or {}).get("Retry-After"))
                if ra is not None:
                    return Decision(True, min(ra, retry_after_cap), reason)
            return Decision(True, backoff(attempt, base, cap, rng), reason)
        return Decision(False, 0.0, reason)
    reason = failure or "unknown"
    if attempt >= max_retries:
        return Decision(False, 0.0, reason)
    return Decision(True, backoff(attempt, base, cap, rng), reason)


def fatal_message(status: int) -> str:
    return FATAL_MESSAGES.get(status, f"the teacher answered HTTP {status}")
