"""The ``landscape`` probe: a loss-landscape slice through the current weights, on a schedule.

Runs in ``--probes full`` (sparsely: every 1000 steps by default) and at the end of a run with
``--probe landscape.at_end=true``. Each run writes one row per grid point and metric (loss,
accuracy for classifiers) and the slice summaries (roughness, slope and curvature per axis)
to the ``landscape`` table. The random directions come from a private generator seeded with
``seed`` (the same Gaussian draw every time, filter-normalized against the current weights).
"""

from __future__ import annotations

import torch

from gradlens.analysis.landscape import landscape, landscape_rows
from gradlens.functional.landscape import IGNORES, NORMS
from gradlens.probes.base import Probe, ProbeContext, Rows

__all__ = ["LandscapeProbe"]

_PROBE_KINDS = ("filter", "hessian", "update")  # "line" needs a second model: use the API


class LandscapeProbe(Probe):
    """Loss landscape around the current weights on the recorded probe batches.

    Args:
        every, at_end, mode: see :class:`~gradlens.probes.base.Probe`.
        dims: 1 or 2.
        steps: points per axis (odd).
        span: coordinates over ``[-span, span]``.
        directions: ``filter`` (random, filter-normalized), ``hessian`` (top eigenvectors) or
            ``update`` (the last update, when the Lens provides it; the second axis is random).
        seed: seed of the private generator of the random directions.
        roughness: random lines for the roughness index (0: none).
        norm, ignore: direction normalization (see ``gradlens.functional.landscape``).
        batch_points: points per vmapped pass (0: automatic, 1: plain loop).
        dtype: autocast dtype for the forwards, e.g. ``bfloat16`` ("" for none).
    """

    name = "landscape"
    tables = ("landscape",)
    preset = "full"
    default_every = 1000
    needs_objective = True
    real_only = True

    def __init__(
        self,
        every: int | None = None,
        at_end: bool = False,
        mode: str = "eval",
        dims: int = 2,
        steps: int = 21,
        span: float = 1.0,
        directions: str = "filter",
        seed: int = 0,
        roughness: int = 8,
        norm: str = "filter",
        ignore: str = "biasbn",
        batch_points: int = 0,
        dtype: str = "",
    ) -> None:
        super().__init__(every, at_end, mode)
        if int(dims) not in (1, 2):
            raise ValueError(f"landscape: dims must be 1 or 2, got {dims}")
        if int(steps) < 3 or int(steps) % 2 == 0:
            raise ValueError(f"landscape: steps must be odd and at least 3, got {steps}")
        if directions not in _PROBE_KINDS:
            raise ValueError(f"landscape: directions must be one of {_PROBE_KINDS}")
        if norm not in NORMS or ignore not in IGNORES:
            raise ValueError(f"landscape: norm in {NORMS}, ignore in {IGNORES}")
        if dtype and not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"landscape: unknown dtype {dtype!r}")
        self.dims, self.steps, self.span = int(dims), int(steps), float(span)
        self.directions, self.seed, self.roughness = directions, int(seed), int(roughness)
        self.norm, self.ignore = norm, ignore
        self.batch_points = int(batch_points) or None
        self.dtype: torch.dtype | None = getattr(torch, dtype) if dtype else None

    def compute(self, ctx: ProbeContext) -> Rows:
        frame = landscape(
            ctx.objective,
            self.dims,
            self.directions,
            self.steps,
            self.span,
            seed=self.seed,
            norm=self.norm,
            ignore=self.ignore,
            update=ctx.update,
            roughness=self.roughness,
            batch_points=self.batch_points,
            dtype=self.dtype,
        )
        return landscape_rows(frame, ctx.step)
