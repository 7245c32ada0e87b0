"""One gradlens run per ``fit``/``train`` call, started and ended by a framework's hooks.

Shared by the callbacks: an automatic :class:`~gradlens.Lens` (what ``gradlens watch``
uses) started when the trainer starts training, closed when it ends, and the trainer's own
metrics passed to :func:`gradlens.log`. A failure inside gradlens is one line on stderr and
training goes on (``GRADLENS_STRICT=1``, the test suite, raises instead).
"""

from __future__ import annotations

import atexit
import numbers
import sys
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from gradlens import user_log
from gradlens.instrument.guard import Guard, reason_of, strict
from gradlens.lens import Lens

__all__ = ["Recording", "outcome"]

# Features of the guard (each switched off on its own, with one line).
RECORDING, FORWARDING = "recording", "metric forwarding"


class Recording:
    """The Lens of the current training call, and the forwarding of the trainer's metrics.

    Args:
        owner: who records, for messages (``"GradlensCallback"``).
        lens_options: keyword options of :class:`~gradlens.Lens`; checked now, so that a
            wrong option fails where the callback is made, not in the middle of ``fit``.
    """

    def __init__(self, owner: str, lens_options: Mapping[str, Any]) -> None:
        for given in ("model", "optimizer"):
            if given in lens_options:
                raise TypeError(
                    f"{owner} finds the models and optimizers itself; {given}= is not an option"
                )
        Lens(**lens_options)  # checks the options; never started
        self.owner = owner
        self.lens_options = dict(lens_options)
        self.lens: Lens | None = None
        self.guard = Guard()

    def start(self) -> None:
        """Start a new run (the trainer's optimizers exist by now: the Lens finds them)."""
        if self.lens is not None:  # the last training call never reached its end hook
            self.close("failed", "training ended without its end hook (an exception?)")
        if user_log.active():  # a Lens records this process already (gradlens watch)
            print(
                f"gradlens: already recording (gradlens watch?); {self.owner} only forwards "
                "the trainer's metrics",
                file=sys.stderr,
            )
            return
        self.lens = self.guard.call(RECORDING, self._started_lens)
        if self.lens is not None:
            atexit.register(self._at_exit)  # after the Lens's own: runs before it

    def log(self, values: Mapping[str, Any]) -> None:
        """The numbers among ``values`` into the ``user`` table, at the last optimizer step."""
        found = {str(k): v for k, v in values.items() if _is_number(v)}
        if found:
            self.guard.call(FORWARDING, _log, found)

    def close(self, status: str, error: str | None = None) -> None:
        """End the run with ``status`` (``finished``, ``failed``, ``interrupted``)."""
        lens, self.lens = self.lens, None
        if lens is None:
            return
        atexit.unregister(self._at_exit)
        try:
            lens.close(status, error=error)
        except Exception as exc:
            if strict():
                raise
            print(f"gradlens: closing the run failed: {reason_of(exc)}", file=sys.stderr)

    def _started_lens(self) -> Lens:
        lens = Lens(**self.lens_options)
        try:
            lens.start()
        except BaseException:
            try:  # undo what was installed before the failure
                lens.close("failed", error="gradlens could not start")
            except Exception:
                pass
            raise
        return lens

    def _at_exit(self) -> None:
        """The process ends with the run open: the trainer raised (Hugging Face has no hook
        for that); Python keeps the uncaught exception in ``sys.last_exc``."""
        exc = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
        if exc is None:  # SystemExit, or a signal: the code is not known here
            self.close("failed", "the process exited before the end of training")
        else:
            self.close(*outcome(exc))


def outcome(exc: BaseException) -> tuple[str, str]:
    """Status and error of a run that ``exc`` ended."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", "KeyboardInterrupt"
    return "failed", reason_of(exc)


def _log(values: dict[str, Any]) -> None:
    user_log.log(values)  # step=None: the Lens's last optimizer step (see the module docs)


def _is_number(value: Any) -> bool:
    if isinstance(value, Tensor):
        return value.numel() == 1 and not value.is_complex()
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
