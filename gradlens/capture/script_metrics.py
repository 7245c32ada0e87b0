"""What the script measures itself: its ``gradlens.log`` scalars and its evaluation loss calls.

Both are buffered without host syncs and written at the step of the last optimizer step:
evaluation sums are flushed after every step (an evaluation ends when training resumes),
``gradlens.log`` rows every ``every`` steps; both at close. Each is a guarded feature: a
failure switches off that one, with one line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gradlens.capture.evaluation import EvalMetrics
from gradlens.capture.user import UserMetrics
from gradlens.instrument.guard import Guard
from gradlens.store.writer import Sink

__all__ = ["EVAL", "USER", "ScriptMetrics"]

USER, EVAL = "user metrics", "eval metrics"  # features the guard switches off


class ScriptMetrics:
    """``gradlens.log`` rows (``user`` table) and evaluation rows (``scalars``: ``eval_*``)."""

    def __init__(self, sink: Sink, say: Callable[[str], None], guard: Guard, every: int) -> None:
        self.user = UserMetrics(sink, say)
        self.eval = EvalMetrics(sink)
        self.guard, self.every = guard, every

    def log(self, values: Any, step: int) -> None:
        self.guard.call(USER, self.user.add, values, step)

    def eval_loss(self, name: str, args: Any, kwargs: Any, value: Any, step: int) -> None:
        self.guard.call(EVAL, self.eval.observe, name, args, kwargs, value, step)

    def held_eval_loss(self, name: str, args: Any, kwargs: Any, value: Any, step: int) -> None:
        """A loss call with gradients on after an eval-mode forward (``EvalMetrics.hold``)."""
        self.guard.call(EVAL, self.eval.hold, name, args, kwargs, value, step)

    def backward(self) -> None:
        if self.eval.holding:
            self.guard.call(EVAL, self.eval.drop_held)

    def model_called(self) -> None:
        if self.eval.holding:
            self.guard.call(EVAL, self.eval.settle)

    def loader_started(self) -> None:
        self.guard.call(EVAL, self.eval.loader_started)

    def after_step(self, done: int) -> None:
        """After optimizer step ``done``: the evaluation since the previous step (if any)."""
        if done % self.every == self.every - 1:
            self.guard.call(USER, self.user.flush)
        self.guard.call(EVAL, self.eval.flush)

    def flush(self) -> None:
        self.guard.call(USER, self.user.flush)
        self.guard.call(EVAL, self.eval.flush)
