"""The status line, rendered into a string buffer: what each mode prints."""

from __future__ import annotations

import io

import pytest

from gradlens.instrument import live
from gradlens.instrument.live import LiveStats, StatusLine

STATS = LiveStats(step=12, loss=0.123456, grad_norm=3.5, spikes=2, nonfinite=1)
LINE = "gradlens [demo] step 12  loss 0.1235  grad_norm 3.5  spikes 2  non-finite 1"


def test_plain_prints_the_latest_numbers_at_most_every_interval_then_the_summary(monkeypatch):
    clock = iter([100.0, 100.0, 105.0, 200.0, 200.0])
    monkeypatch.setattr(live.time, "monotonic", lambda: next(clock))
    out = io.StringIO()
    status = StatusLine("demo", "plain", stream=out)
    status.start()
    status.update(STATS)
    status.update(LiveStats(step=13))  # 5 s later: not printed
    status.update(LiveStats())  # 100 s later: printed
    status.stop("done")
    assert out.getvalue().splitlines() == [
        LINE,
        "gradlens [demo] waiting for the first optimizer step",
        "done",
    ]


def test_off_prints_nothing():
    out = io.StringIO()
    status = StatusLine("demo", "off", stream=out)
    status.start()
    status.update(STATS)
    status.stop("done")
    assert out.getvalue() == ""


def test_auto_is_plain_off_a_terminal():
    status = StatusLine("demo", "auto", stream=io.StringIO())
    assert (status.mode, status.live) == ("plain", False)


def test_an_unknown_mode_is_a_one_line_value_error():
    with pytest.raises(ValueError, match="status mode must be one of off, auto, live, plain"):
        StatusLine("demo", "loud")
