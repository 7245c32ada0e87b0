"""The per-step unit of capture: a :class:`StepSignal` declares its slots in the device row.

A captured row (one optimizer step) is the concatenation of every signal's slots, written with
one ``torch.cat`` into a preallocated device buffer, copied to the host with one asynchronous
copy per flush and, in multi-process runs, summed over ranks with one all-reduce. A signal:

- declares its :class:`Slot` s: a metric name, whether it holds one value per parameter tensor,
  and how ranks combine it (``reduce``);
- returns device tensors for its slots at the pre-step hook (:meth:`StepSignal.before`) and,
  when it needs the parameters after the update, at the post-step hook (:meth:`StepSignal.after`);
  a slot it leaves out holds its ``default`` (NaN: "not measured at this step");
- turns its columns back into table rows on the writer thread (:meth:`StepSignal.decode`; the
  default writes scalar slots to ``scalars`` and per-tensor slots to ``layers``).

Adding a per-step metric is one subclass, passed to the recorder with ``signals=[...]``.
The built-ins are :class:`LossSignal`, :class:`ScalerSignal`, ``capture.norms.NormSignal``
(gradient, parameter and update norms, non-finite entries, clipping) and
``capture.softmax.SoftmaxSignal``; the first three are decoded together by
``capture.decode.ChunkDecoder`` (spike detection needs all of them at once).

Example:
    >>> class MaxGrad(StepSignal):              # the largest |g| of each tensor, every step
    ...     slots = (Slot("grad_max", per_tensor=True, reduce="local"),)
    ...     def before(self, view):
    ...         return {"grad_max": torch.stack([g.abs().max() for g in view.grads()])}
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from gradlens.instrument.guard import Guard
from gradlens.store.schema import Coded

__all__ = [
    "REDUCE",
    "Guarded",
    "LossSignal",
    "ScalerSignal",
    "Slot",
    "StepSignal",
    "StepView",
    "Tables",
]

REDUCE = ("mean", "norm", "count", "local")
"""How a slot is combined over ranks (one SUM all-reduce of the row, undone on the host):

- ``mean``: a replicated scalar; the sum is divided by the world size;
- ``norm``: a per-tensor L2 norm, summed as squares and divided by the tensor's replication
  factor before the square root (a sharded tensor's norm from its shards);
- ``count``: a per-tensor count, divided by the replication factor;
- ``local``: not reduced (this rank's own value; rank 0's is the one written).
"""

Tables = dict[str, dict[str, Any]]


@dataclass(frozen=True)
class Slot:
    """One metric of a signal: one float32 value per step, or one per parameter tensor."""

    metric: str
    per_tensor: bool = False
    reduce: str = "mean"
    default: float = math.nan  # the value of a step where the signal gives none

    def __post_init__(self) -> None:
        if self.reduce not in REDUCE:
            raise ValueError(f"reduce must be one of {', '.join(REDUCE)}, got {self.reduce!r}")


@dataclass
class StepView:
    """What a signal sees at one step: the recorder's parameters and the step's facts."""

    params: Sequence[Tensor]
    names: Sequence[str]
    device: torch.device
    step: int = 0
    loss: Tensor | None = None
    grad_scale: Tensor | None = None  # fused AMP optimizers see scaled gradients
    skipped: Tensor | None = None  # device flag: the optimizer will not apply this step
    amp_scale: Tensor | None = None
    sample: bool = True  # parameter-side signals (‖θ‖, ‖Δθ‖, cosines) may read this step
    primary: bool = True  # the run's primary optimizer takes this step
    applied: bool = True  # after(): the optimizer applied the step
    tail: bool = False  # manual updates: the row of the last update only
    optimizer: Any = None  # the optimizer taking this step (Δθ from its state, capture.updates)
    keep_update: bool = True  # keep this step's Δθ after the post-step (a probe will read it)
    _grads: list[Tensor | None] | None = field(default=None, repr=False)

    def grads(self) -> list[Tensor | None]:
        """The parameters' gradients (``None`` where a tensor got none this step)."""
        if self._grads is None:
            self._grads = [p.grad for p in self.params]
        return self._grads


class StepSignal:
    """A per-step measurement: slots in the row, device tensors in, table rows out."""

    slots: ClassVar[tuple[Slot, ...]] = ()

    def before(self, view: StepView) -> Mapping[str, Tensor]:
        """Values at the pre-step hook (gradients final, parameters not yet updated)."""
        return {}

    def after(self, view: StepView) -> Mapping[str, Tensor]:
        """Values at the post-step hook (parameters updated)."""
        return {}

    def decode(
        self, steps: np.ndarray, columns: Mapping[str, np.ndarray], names: Sequence[str]
    ) -> Tables:
        """Writer thread: the primary optimizer's rows of this signal's slots (``columns``:
        ``(steps,)`` or ``(steps, tensors)`` float64 arrays) → table rows; NaN = not measured."""
        return generic_rows(steps, columns, self.slots, names)


class LossSignal(StepSignal):
    """The loss backpropagated for this step (and, kept apart from the reduced part of the
    row, this rank's own loss)."""

    slots = (Slot("loss"), Slot("local_loss", reduce="local"))

    def before(self, view: StepView) -> Mapping[str, Tensor]:
        if view.loss is None:
            return {}
        loss = as_slot(view.loss, view.device)
        return {"loss": loss, "local_loss": loss}


class ScalerSignal(StepSignal):
    """AMP: whether the step was skipped (a device flag) and the loss scale."""

    slots = (Slot("skipped", default=0.0), Slot("amp_scale"))

    def before(self, view: StepView) -> Mapping[str, Tensor]:
        out = {}
        if view.skipped is not None:
            out["skipped"] = as_slot(view.skipped, view.device)
        if view.amp_scale is not None:
            out["amp_scale"] = as_slot(view.amp_scale, view.device)
        return out


class Guarded(StepSignal):
    """An added signal behind a :class:`~gradlens.instrument.guard.Guard`: if it fails (on
    the training thread or the writer thread) only its own feature is switched off; its slots
    then hold their defaults and the rest of the row is written as before."""

    def __init__(self, signal: StepSignal, guard: Guard, feature: str) -> None:
        self.signal, self.guard, self.feature = signal, guard, feature
        self.slots = signal.slots  # type: ignore[misc]

    def before(self, view: StepView) -> Mapping[str, Tensor]:
        return self.guard.call(self.feature, self.signal.before, view) or {}

    def after(self, view: StepView) -> Mapping[str, Tensor]:
        return self.guard.call(self.feature, self.signal.after, view) or {}

    def decode(
        self, steps: np.ndarray, columns: Mapping[str, np.ndarray], names: Sequence[str]
    ) -> Tables:
        return self.guard.call(self.feature, self.signal.decode, steps, columns, names) or {}


def as_slot(value: Tensor, device: torch.device) -> Tensor:
    """A one-element tensor as a float32 ``(1,)`` slot on ``device`` (no host sync)."""
    if value.requires_grad:
        value = value.detach()
    value = value.reshape(1)
    if value.dtype != torch.float32 or value.device != device:  # skips a no-op .to dispatch
        value = value.to(device, torch.float32, non_blocking=True)
    return value


def generic_rows(
    steps: np.ndarray,
    columns: Mapping[str, np.ndarray],
    slots: Sequence[Slot],
    names: Sequence[str],
) -> Tables:
    """Scalar slots → ``scalars`` rows, per-tensor slots → ``layers`` rows (NaN left out)."""
    scalars: dict[str, list[np.ndarray]] = {"step": [], "metric": [], "index": [], "value": []}
    layers: dict[str, list[np.ndarray]] = {"step": [], "layer": [], "metric": [], "value": []}
    labels = [s.metric for s in slots]
    for code, slot in enumerate(slots):
        values = columns[slot.metric]
        if slot.per_tensor:
            at, layer = np.nonzero(np.isfinite(values))
            layers["step"].append(steps[at])
            layers["layer"].append(layer)
            layers["metric"].append(np.full(len(at), code))
            layers["value"].append(values[at, layer])
        else:
            kept = np.isfinite(values)
            scalars["step"].append(steps[kept])
            scalars["metric"].append(np.full(int(kept.sum()), code))
            scalars["index"].append(np.zeros(int(kept.sum()), dtype=np.int32))
            scalars["value"].append(values[kept])
    out: Tables = {}
    if scalars["step"] and sum(map(len, scalars["step"])):
        out["scalars"] = {
            "step": np.concatenate(scalars["step"]),
            "metric": Coded(np.concatenate(scalars["metric"]), labels),
            "index": np.concatenate(scalars["index"]),
            "value": np.concatenate(scalars["value"]),
        }
    if layers["step"] and sum(map(len, layers["step"])):
        out["layers"] = {
            "step": np.concatenate(layers["step"]),
            "layer": Coded(np.concatenate(layers["layer"]), list(names)),
            "metric": Coded(np.concatenate(layers["metric"]), labels),
            "value": np.concatenate(layers["value"]),
        }
    return out
