"""``gradlens.log``: the scalars a script computes itself (validation accuracy, BLEU, …).

Inside ``gradlens watch`` or a started :class:`~gradlens.Lens`, ``gradlens.log({"val/acc":
0.93})`` writes a row per value to the run's ``user`` table, at the step of the last optimizer
step (or the ``step`` given). Outside gradlens it does nothing, so a script that calls it runs
the same without gradlens. Tensors are accepted without a host sync: they are copied with the
next flush. A value that is not a number is skipped with one line, never raised: gradlens
must not make a script fail that runs without it.

Example:
    >>> import gradlens
    >>> gradlens.log({"val/acc": 0.93, "bleu": 21.4})   # no-op outside gradlens
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["log"]

Sink = Callable[[Mapping[str, Any], "int | None"], None]
_sinks: list[Sink] = []  # the running Lens (the last started wins)


def log(values: Mapping[str, Any], step: int | None = None) -> None:
    """Record ``values`` (name → number or one-element tensor) at the current or given step."""
    if _sinks:
        _sinks[-1](values, step)


def active() -> bool:
    """Whether a gradlens run records this process now (``watch`` or a started ``Lens``)."""
    return bool(_sinks)


def attach(sink: Sink) -> None:
    _sinks.append(sink)


def detach(sink: Sink) -> None:
    if sink in _sinks:
        _sinks.remove(sink)
