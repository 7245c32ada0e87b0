"""What the hot path hands to the writer thread: a block of device rows plus host facts."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["HEAD", "Chunk", "Layout", "StepInfo"]

# The per-step scalars at the start of a row, in order.
HEAD = ("loss", "skipped", "amp_scale", "grad_norm_clipped", "clip_coef")


@dataclass(frozen=True)
class Layout:
    """Meaning of the slots in one captured row (one optimizer step).

    Row = ``[*HEAD, grad_norm×P, param_norm×P, update_norm×P, nonfinite×P, local_loss]``;
    ``grad_norm`` is the gradient the model produced (before any clipping), and
    ``grad_norm_clipped``/``clip_coef`` are NaN on steps without a clipping call.
    ``update_lag`` is 1 when updates are only seen at the next step (manual SGD:
    the update recorded in row t is the one applied after step t-1).

    With ``factors`` (multi-process runs) every slot but the last was summed over ``world``
    ranks and the norms are *squared*: a per-tensor value is recovered as
    ``sqrt(slot / factor)`` (counts: ``slot / factor``), a replicated scalar as ``slot / world``
    (the loss becomes the mean over ranks); ``local_loss`` is this rank's own.
    """

    names: tuple[str, ...]
    update_lag: int = 0
    factors: tuple[float, ...] | None = None
    world: int = 1

    @property
    def n(self) -> int:
        return len(self.names)

    @property
    def size(self) -> int:
        return len(HEAD) + 4 * self.n + 1

    @property
    def reduced(self) -> slice:
        """The slots summed over ranks."""
        return slice(0, self.size - 1)

    def block(self, i: int) -> slice:
        """Slots of per-parameter block ``i`` (0 grad, 1 param, 2 update, 3 non-finite)."""
        start = len(HEAD) + i * self.n
        return slice(start, start + self.n)


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
