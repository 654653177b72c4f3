"""The progress contract: (done, total, label) events, collected here in a list."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag.progress import counter, emit


def test_counter_reports_running_sums_and_nothing_without_a_listener() -> None:
    events: list[tuple[int, int, str]] = []
    advance = counter(lambda d, t, label: events.append((d, t, label)), 10, "bytes")
    advance(4)
    advance(6)
    assert events == [(0, 10, "bytes"), (4, 10, "bytes"), (10, 10, "bytes")]
    counter(None, 10, "x")(5)  # no listener: nothing to call
    emit(None, 1, 1, "x")


def test_bundle_verify_emits_byte_events(tmp_path: Path) -> None:
    import io
    import tarfile

    from rag.bundle import seal_manifest, verify_bundle

    raw = seal_manifest({"format": "raftsmith-bundle/1", "members": []})
    bundle = tmp_path / "b.tar"
    with tarfile.open(bundle, "w") as tf:
        info = tarfile.TarInfo("manifest.json")
        info.size = len(raw)
        tf.addfile(info, io.BytesIO(raw))
    events: list[tuple[int, int, str]] = []
    verify_bundle(bundle, progress=lambda d, t, label: events.append((d, t, label)))
    size = bundle.stat().st_size
    assert events[0] == (0, size, "verifying") and all(t == size and label == "verifying" for _, t, label in events)


def test_the_bar_shows_the_rate_and_time_left(monkeypatch: pytest.MonkeyPatch) -> None:
    """A counted bar draws done/total, items per second and the time remaining (to stderr)."""
    import io
    import re
    import time

    import rich.console

    from rag.cli.progress import progress_bar, rate_text

    assert rate_text(None) == "" and rate_text(0.0) == ""
    assert rate_text(12.345) == "12.3/s" and rate_text(2500.0) == "2,500/s"
    buf = io.StringIO()
    real = rich.console.Console
    monkeypatch.setattr(rich.console, "Console", lambda **kw: real(file=buf, force_terminal=True, width=120))
    with progress_bar(True) as show:
        assert show is not None
        for i in range(1, 6):
            show(i * 10, 100, "embedding chunks")
            time.sleep(0.05)
    drawn = buf.getvalue()  # the bar draws its last state when it stops (then clears it)
    assert "embedding chunks" in drawn and "50/100" in drawn
    assert re.search(r"\d/s", drawn) and "0:00:" in drawn  # the rate, then the time remaining
