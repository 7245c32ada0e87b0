"""The status line ``watch`` shows while training: rich on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from typing import TextIO

from rich.console import Console
from rich.live import Live
from rich.text import Text

__all__ = ["MODES", "LiveStats", "StatusLine"]

PLAIN_INTERVAL_S = 15.0


@dataclass
class LiveStats:
    """The latest numbers, for the status line (filled in by the writer thread's decoder)."""

    step: int = -1
    loss: float = float("nan")
    grad_norm: float = float("nan")
    spikes: int = 0
    nonfinite: int = 0


def _describe(name: str, stats: LiveStats) -> str:
    if stats.step < 0:
        return f"gradlens [{name}] waiting for the first optimizer step"
    return (
        f"gradlens [{name}] step {stats.step}  loss {stats.loss:.4g}  "
        f"grad_norm {stats.grad_norm:.4g}  spikes {stats.spikes}  non-finite {stats.nonfinite}"
    )


MODES = ("off", "auto", "live", "plain")


class StatusLine:
    """Shows the latest :class:`LiveStats`; ``update`` may be called from any thread.

    Modes: ``live`` (a rich line redrawn in place), ``plain`` (a line every 15 s and a summary),
    ``auto`` (live on a terminal, plain otherwise), ``off`` (silent).
    """

    def __init__(self, name: str, mode: str = "auto", stream: TextIO | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"status mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.name = name
        self.stream = stream or sys.stderr
        self.console = Console(file=self.stream)
        if mode == "auto":
            mode = "live" if self.console.is_terminal else "plain"
        self.mode = mode
        self.live = mode == "live"
        self._display: Live | None = None
        self._lock = threading.Lock()
        self._last_plain = 0.0
        self._stats = LiveStats()

    def start(self) -> None:
        if self.live:
            self._display = Live(
                Text(_describe(self.name, self._stats), style="dim"),
                console=self.console,
                refresh_per_second=4,
                transient=True,
            )
            self._display.start()

    def update(self, stats: LiveStats) -> None:
        with self._lock:
            self._stats = stats
            if self._display is not None:
                self._display.update(Text(_describe(self.name, stats), style="dim"))
            elif self.mode == "plain" and time.monotonic() - self._last_plain >= PLAIN_INTERVAL_S:
                self._last_plain = time.monotonic()
                print(_describe(self.name, stats), file=self.stream, flush=True)

    def stop(self, summary: str) -> None:
        with self._lock:
            if self._display is not None:
                self._display.stop()
                self._display = None
        if self.mode != "off":
            print(summary, file=self.stream, flush=True)
