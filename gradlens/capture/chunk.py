"""What the hot path hands to the writer thread: a block of device rows plus host facts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gradlens.capture.signals import Slot, StepSignal

__all__ = ["Chunk", "Layout", "StepInfo"]


@dataclass(frozen=True)
class Layout:
    """Meaning of the slots in one captured row (one optimizer step): the concatenation of
    the signals' slots (see ``capture.signals``), the rank-reduced slots first.

    ``grad_norm`` is the gradient the model produced (before any clipping), and
    ``grad_norm_clipped``/``clip_coef`` are NaN on steps without a clipping call.
    ``update_lag`` is 1 when updates are only seen at the next step (manual SGD:
    the update recorded in row t is the one applied after step t-1).

    With ``factors`` (multi-process runs) the reduced slots were summed over ``world`` ranks
    and norms are *squared*; :meth:`unreduce` undoes it slot by slot (see ``signals.REDUCE``).
    """

    names: tuple[str, ...]
    slots: tuple[Slot, ...]
    update_lag: int = 0
    factors: tuple[float, ...] | None = None
    world: int = 1

    @staticmethod
    def of(signals: Sequence[StepSignal], names: Sequence[str], **kwargs: Any) -> Layout:
        slots = [slot for signal in signals for slot in signal.slots]
        metrics = [s.metric for s in slots]
        clash = {m for m in metrics if metrics.count(m) > 1}
        if clash:
            raise ValueError(f"two signals declare the slot(s) {sorted(clash)}")
        ordered = [s for s in slots if s.reduce != "local"] + [
            s for s in slots if s.reduce == "local"
        ]
        return Layout(tuple(names), tuple(ordered), **kwargs)

    @property
    def n(self) -> int:
        return len(self.names)

    def width(self, slot: Slot) -> int:
        return self.n if slot.per_tensor else 1

    @cached_property  # read at every step's row write: computed once (the layout is frozen)
    def size(self) -> int:
        return sum(self.width(s) for s in self.slots)

    @cached_property
    def reduced(self) -> slice:
        """The slots summed over ranks (a prefix of the row)."""
        return slice(0, sum(self.width(s) for s in self.slots if s.reduce != "local"))

    def where(self, metric: str) -> slice:
        """The positions of ``metric`` in a row (``KeyError`` if no signal declares it)."""
        start = 0
        for slot in self.slots:
            if slot.metric == metric:
                return slice(start, start + self.width(slot))
            start += self.width(slot)
        raise KeyError(metric)

    def has(self, metric: str) -> bool:
        return any(s.metric == metric for s in self.slots)

    def column(self, rows: np.ndarray, metric: str) -> np.ndarray:
        """``metric`` of every row: ``(steps,)`` for a scalar slot, ``(steps, n)`` per tensor."""
        where = self.where(metric)
        per_tensor = next(s.per_tensor for s in self.slots if s.metric == metric)
        return rows[:, where] if per_tensor else rows[:, where.start]

    def unreduce(self, rows: np.ndarray) -> np.ndarray:
        """Undo the cross-rank SUM (a no-op for a single process)."""
        if self.factors is None:
            return rows
        factors = np.asarray(self.factors)
        rows = rows.copy()
        for slot in self.slots:
            at = self.where(slot.metric)
            if slot.reduce == "norm":
                rows[:, at] = np.sqrt(np.maximum(rows[:, at] / factors, 0.0))
            elif slot.reduce == "count":
                rows[:, at] /= factors
            elif slot.reduce == "mean":
                rows[:, at] /= self.world
        return rows

    def parts(self, values: Mapping[str, Tensor], defaults: Mapping[str, Tensor]) -> list[Tensor]:
        """The parts of one row, in slot order (a slot without a value takes its default)."""
        return [values.get(s.metric, defaults[s.metric]) for s in self.slots]


@dataclass
class StepInfo:
    """Host-side facts about one step, known without touching the device."""

    step: int
    wall_time: float  # seconds since the run started
    step_time: float | None  # seconds since the previous step ended
    samples: int  # training samples seen by the model(s) in this step
    tokens: int  # tokens, when the model input is a (batch, sequence) integer tensor
    lrs: tuple[float | Tensor, ...] = ()
    has_loss: bool = True
    skipped: bool = False  # known on the host (GradScaler skipped the optimizer step)
    tail: bool = False  # only the update slot is meaningful (last manual update)
    primary: bool = True  # the run's primary optimizer took this step (else metric@serial)
    sampled: bool = True  # parameter and update norms were read at this step


@dataclass
class Chunk:
    """Rows ``[0, len(infos))`` of a capture buffer, copied to the host (maybe still in flight)."""

    rows: Tensor  # (steps, layout.size) float32 on the CPU
    infos: list[StepInfo]
    layout: Layout
    ready: torch.cuda.Event | None = field(default=None)

    def wait(self) -> None:
        """Block (on the writer thread) until the asynchronous device-to-host copy landed."""
        if self.ready is not None:
            self.ready.synchronize()
