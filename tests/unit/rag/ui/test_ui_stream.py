"""The page's answer stream: events in order, tokens batched after the first, errors as a last line."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from rag.errors import ConfigError
from rag.ui.app import _run_streamed, _TokenBatcher


def _collect(work: Callable[[Callable[[dict[str, Any]], None]], None]) -> tuple[list[dict[str, Any]], int]:
    async def run() -> tuple[list[dict[str, Any]], int]:
        chunks = [c async for c in _run_streamed(work)]
        return [json.loads(x) for c in chunks for x in c.splitlines()], len(chunks)

    return asyncio.run(run())


def test_every_event_arrives_in_order_and_queued_events_share_a_chunk() -> None:
    def work(emit: Callable[[dict[str, Any]], None]) -> None:
        for i in range(500):
            emit({"type": "token", "text": str(i)})
        emit({"type": "done"})

    events, chunks = _collect(work)
    assert [e["text"] for e in events[:-1]] == [str(i) for i in range(500)]
    assert events[-1] == {"type": "done"}
    assert chunks < len(events)  # what was already queued went out together


def test_a_failure_ends_the_stream_with_its_message() -> None:
    def refused(emit: Callable[[dict[str, Any]], None]) -> None:
        emit({"type": "token", "text": "a"})
        raise ConfigError("Unknown model; choose base or tuned.")

    def broken(emit: Callable[[dict[str, Any]], None]) -> None:
        raise KeyError("/home/someone/secret/path")

    events, _ = _collect(refused)
    assert events == [{"type": "token", "text": "a"}, {"type": "error", "message": "Unknown model; choose base or tuned."}]
    events, _ = _collect(broken)
    assert events[-1]["type"] == "error" and "KeyError" in events[-1]["message"]
    assert "/home/someone" not in events[-1]["message"]  # no internals on the page


def test_the_first_token_goes_at_once_and_the_rest_in_batches() -> None:
    got: list[dict[str, Any]] = []
    batch = _TokenBatcher(got.append, {"side": "base"}, interval=3600)
    for piece in ("The", " port", " is", " 7431."):
        batch(piece)
    assert got == [{"type": "token", "text": "The", "side": "base"}]
    batch.flush()
    assert got[1] == {"type": "token", "text": " port is 7431.", "side": "base"}
    batch.flush()  # nothing pending: nothing sent
    assert len(got) == 2

    every: list[dict[str, Any]] = []
    unbatched = _TokenBatcher(every.append, {}, interval=0)
    for piece in ("a", "b", "c"):
        unbatched(piece)
    assert [e["text"] for e in every] == ["a", "b", "c"]
