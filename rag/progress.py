"""One progress contract for every long step: the library emits, the edge renders.

A long step (ingest, generate, train, export, bundle, eval) takes ``progress: Progress | None``
and calls it with ``(done, total, label)``: ``done`` of ``total`` units of the step named
``label``; ``total == 0`` means a stage without a count (export's stages). ``None`` means
nobody is watching. The CLI draws a rich bar (:func:`rag.cli.progress.progress_bar`); tests
collect the events in a list.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Progress", "counter", "emit"]

#: (done, total, label); total 0 = a stage with no count
Progress = Callable[[int, int, str], None]


def emit(progress: Progress | None, done: int, total: int, label: str) -> None:
    """Report one event when someone is listening."""
    if progress is not None:
        progress(done, total, label)


def counter(progress: Progress | None, total: int, label: str) -> Callable[[int], None]:
    """``advance(n)`` for streams: adds ``n`` to what is done and reports the running sum."""
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        emit(progress, done, total, label)

    if progress is None:
        return lambda n: None
    emit(progress, 0, total, label)
    return advance
