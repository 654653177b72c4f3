"""The command line's rendering of the progress contract (:mod:`rag.progress`): a rich bar.

Bars go to stderr, so ``--json`` output on stdout stays clean. A counted bar shows done/total,
the rate (items per second: chunks/s while ingest embeds) and the time remaining. Events with a total move one
bar whose description is the event's label; events without a total (stages) are printed as
lines, as export's stages always were.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from rag.progress import Progress


def rate_text(speed: float | None) -> str:
    """Items per second as the bar shows it ('' until rich has measured a speed)."""
    if not speed:
        return ""
    return f"{speed:.1f}/s" if speed < 100 else f"{speed:,.0f}/s"


def _rate_column() -> Any:
    from rich.progress import ProgressColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
        """Items per second (chunks/s while ingest embeds, rows/s while generate answers)."""

        def render(self, task: Any) -> Text:
            return Text(rate_text(task.speed), style="progress.data.speed")

    return RateColumn()


@contextlib.contextmanager
def progress_bar(enabled: bool = True, *, unit: str = "items") -> Iterator[Progress | None]:
    """A :data:`~rag.progress.Progress` callback drawing on stderr, or None when ``enabled`` is off.

    ``unit="bytes"`` shows sizes and transfer speed instead of counts.
    """
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )
    from rich.progress import Progress as RichProgress

    console = Console(stderr=True)
    counts: list[Any] = ([DownloadColumn(), TransferSpeedColumn()] if unit == "bytes"
                         else [MofNCompleteColumn(), _rate_column()])
    with RichProgress(TextColumn("{task.description}"), BarColumn(), *counts, TimeRemainingColumn(),
                      console=console, transient=True) as bar:
        task = bar.add_task("", total=None, visible=False)

        def show(done: int, total: int, label: str) -> None:
            if total <= 0:
                console.print(f"[bold cyan]{label}[/]")
                return
            bar.update(task, completed=done, total=total, description=label, visible=True)

        yield show
