"""The precision of a landscape slice: the fastest engine within ``tol`` of the float32 loop.

With neither an autocast dtype nor channels-last asked for, on CUDA the candidates are float32,
TF32 and bf16 autocast (+ channels-last for conv nets); each is timed on a few check points
(centre, ends, quarters) and kept only when its loss there stays within ``tol`` (absolute) of
the float32 loop. Elsewhere only what was asked for runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from gradlens.analysis.landscape.directions import Direction
from gradlens.analysis.landscape.evaluate import Offsets, loop_losses
from gradlens.analysis.objective import Objective

__all__ = ["CHECK_POINTS", "Precision", "check_indices", "choose_precision", "setup", "tf32"]

CHECK_POINTS = 5  # grid points (centre, ends, quarters) evaluated by the float32 loop as a check


@dataclass(frozen=True)
class Precision:
    """A way to run the forwards: autocast ``dtype``, channels-last, TF32 matmuls."""

    name: str
    dtype: torch.dtype | None = None
    channels_last: bool = False
    tf32: bool = False


def _candidates(
    objective: Objective, dtype: torch.dtype | None, channels_last: bool
) -> list[Precision]:
    """What ``auto`` may use: on CUDA also TF32 and bf16 autocast (with channels-last when the
    model has convolutions); elsewhere only what was asked for."""
    asked = Precision(
        "float32" if dtype is None else str(dtype).removeprefix("torch."), dtype, channels_last
    )
    if objective.device.type != "cuda" or dtype is not None or channels_last:
        return [asked]
    conv = any(p.dim() == 4 for p in objective.params)
    out = [asked, Precision("tf32", tf32=True)]
    out.append(Precision("bfloat16+channels_last" if conv else "bfloat16", torch.bfloat16, conv))
    return out


@contextlib.contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def check_indices(n: int) -> list[int]:
    return sorted({0, n // 4, n // 2, (3 * n) // 4, n - 1})[:CHECK_POINTS]


def setup(
    objective: Objective, base: dict[str, Tensor], vectors: Sequence[Direction], cl: bool
) -> tuple[Objective, Offsets]:
    """The objective and offsets a precision runs on (NHWC inputs and weights with ``cl``)."""
    return (_channels_last_objective(objective) if cl else objective), Offsets(base, vectors, cl)


def choose_precision(
    objective: Objective,
    base: dict[str, Tensor],
    vectors: Sequence[Direction],
    coefs: Tensor,
    dtype: torch.dtype | None,
    channels_last: bool,
    tol: float,
) -> tuple[Precision, Tensor, dict[str, dict[str, float]]]:
    """The float32 loop on the check points, then each candidate timed there; the fastest
    whose largest absolute loss error stays within ``tol`` wins (float32 always qualifies).

    Returns the precision, the reference losses on the check points and what was measured.
    """
    candidates = _candidates(objective, dtype, channels_last)
    points = coefs[check_indices(coefs.shape[0])]
    reference, _ = loop_losses(objective, Offsets(base, vectors, False), points, None)
    measured: dict[str, dict[str, float]] = {}
    for candidate in candidates if len(candidates) > 1 else []:
        obj, offsets = setup(objective, base, vectors, candidate.channels_last)
        with tf32(candidate.tf32):
            losses, seconds = loop_losses(obj, offsets, points, candidate.dtype)
        error = float((losses - reference).abs().max())
        measured[candidate.name] = {"seconds_per_point": seconds, "error": error}
    qualified = [
        c for c in candidates if c.name not in measured or measured[c.name]["error"] <= tol
    ]
    best = min(
        qualified,
        key=lambda c: measured[c.name]["seconds_per_point"] if c.name in measured else 0.0,
    )
    return best, reference, measured


def _channels_last_objective(objective: Objective) -> Objective:
    def convert(value: Any) -> Any:
        if isinstance(value, Tensor) and value.dim() == 4 and value.is_floating_point():
            return value.contiguous(memory_format=torch.channels_last)
        return value

    batches = [
        dataclasses.replace(b, args=tuple(convert(a) for a in b.args)) for b in objective.batches
    ]
    return Objective(objective.model, batches, objective.mode)
