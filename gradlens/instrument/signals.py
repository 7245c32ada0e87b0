"""Hold SIGINT and SIGTERM while gradlens finishes a run, so that closing is atomic.

Inside ``with HeldSignals() as held:`` a Ctrl-C or SIGTERM is noted instead of raised. Ctrl-C
presses are counted (``presses`` counts one already made, e.g. the Ctrl-C that stopped the
script): the second says ``gradlens: finishing the run, press Ctrl-C again to abandon`` and the
third abandons (``KeyboardInterrupt`` is raised where the block is). On leaving the block the
previous handlers come back and, with ``redeliver=True``, the first held signal is raised
again under them (so Python's default turns a held Ctrl-C into ``KeyboardInterrupt`` after the
run is safe, and a default SIGTERM ends the process after it).

Only the main thread can hold signals; elsewhere, and inside another ``HeldSignals``, the
block runs as it is (the outer one holds).

Example:
    >>> with HeldSignals() as held:                               # doctest: +SKIP
    ...     writer.close()
    ...     update_meta(run_dir, status="finished")
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType, TracebackType
from typing import Any

__all__ = ["ABANDON_MESSAGE", "HeldSignals", "exit_code_for"]

ABANDON_MESSAGE = "gradlens: finishing the run, press Ctrl-C again to abandon"
HELD = (signal.SIGINT, signal.SIGTERM)
_active: list[HeldSignals] = []  # the holding context, if any (main thread only)


def exit_code_for(signum: int) -> int:
    """The exit code a shell reports for a process ended by ``signum`` (130, 143)."""
    return 128 + int(signum)


class HeldSignals:
    """Context manager: SIGINT and SIGTERM are held until the block ends (see the module)."""

    def __init__(self, presses: int = 0, redeliver: bool = True, abandon_after: int = 3) -> None:
        self.presses = presses
        self.redeliver = redeliver
        self.abandon_after = abandon_after
        self.received: list[int] = []
        self.abandoned = False
        self.active = False
        self._previous: dict[int, Any] = {}

    @property
    def first(self) -> int | None:
        """The first signal held, if any."""
        return self.received[0] if self.received else None

    def __enter__(self) -> HeldSignals:
        if _active or threading.current_thread() is not threading.main_thread():
            return self
        try:
            for signum in HELD:
                self._previous[signum] = signal.signal(signum, self._hold)
        except (ValueError, OSError):  # no signals here (embedded interpreter)
            self._restore()
            return self
        self.active = True
        _active.append(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.active:
            return
        self._restore()
        if self.redeliver and self.first is not None and exc_type is None and not self.abandoned:
            signal.raise_signal(self.first)

    def _hold(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)
        if signum != signal.SIGINT:
            return
        self.presses += 1
        if self.presses >= self.abandon_after:
            self.abandoned = True
            self._restore()
            raise KeyboardInterrupt
        if self.presses == self.abandon_after - 1:
            print(ABANDON_MESSAGE, file=sys.stderr, flush=True)

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            try:
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
            except (ValueError, OSError):
                pass
        self._previous.clear()
        if self in _active:
            _active.remove(self)
