"""The common shape of scheduled probes: a schedule, one ``compute``, rows out.

A probe runs on the training thread right after a scheduled optimizer step, inside
``Objective.isolated()`` (parameters, gradients, modes, buffers and RNG restored afterwards,
gradlens's interception suspended), on the batches recorded in the probe set. Subclasses set
the class attributes and implement :meth:`Probe.compute`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from gradlens.analysis.objective import MODES, Objective

__all__ = ["PRESET_ORDER", "Probe", "ProbeContext", "ProbeUnavailable", "Rows"]

PRESET_ORDER = ("cheap", "standard", "full")
Rows = dict[str, dict[str, list[Any]]]


class ProbeUnavailable(Exception):
    """Raised by :meth:`Probe.compute` when the probe cannot measure this run (no class
    targets, no derivative for the model): the runner says the one-line message once, lists
    it in ``meta.json``'s ``unavailable`` and does not run the probe again."""


@dataclass
class ProbeContext:
    """What a probe may use: the objective on the probe set, and where training stands.

    ``update`` is the parameter change Δθ = θ_after − θ_before of the step just taken (name →
    tensor, names as in ``objective.names``), or None when unknown (manual updates, or
    ``track_updates=False``); it is computed on first use.
    """

    step: int
    objective: Objective
    lrs: list[float] = field(default_factory=list)
    optimizer: torch.optim.Optimizer | None = None
    update_fn: Callable[[], Mapping[str, torch.Tensor] | None] | None = None
    world: int = 1  # > 1: every rank runs the probe on its own batches; combine across ranks
    _update: Mapping[str, torch.Tensor] | None = field(default=None, init=False, repr=False)

    @property
    def model(self) -> nn.Module:
        return self.objective.model

    @property
    def update(self) -> Mapping[str, torch.Tensor] | None:
        if self._update is None and self.update_fn is not None:
            self._update = self.update_fn()
        return self._update


class Probe(ABC):
    """A scheduled, expensive measurement.

    Class attributes:
        name: the probe's name (``--probe NAME.KEY=VALUE`` on the command line).
        tables: the tables it writes.
        preset: the cheapest preset that includes it (cheap < standard < full).
        default_every: steps between runs by default.
        needs_objective: it measures the training loss itself (curvature, values), so it is not
            run when the recorded loss call is only a part of the loss the script trains on.
        real_only: its math takes real parameter vectors (Lanczos, a radius along Δθ,
            filter-normalized directions), so it is unavailable on a model with complex
            parameters.

    Args:
        every: run after every ``every``-th optimizer step (0 disables the schedule).
        at_end: also run once when the run closes.
        mode: ``eval`` or ``train`` — the probe chooses explicitly, never inherits the script's.
    """

    name: ClassVar[str] = ""
    tables: ClassVar[tuple[str, ...]] = ()
    preset: ClassVar[str] = "full"
    default_every: ClassVar[int] = 500
    needs_objective: ClassVar[bool] = False
    real_only: ClassVar[bool] = False

    def __init__(self, every: int | None = None, at_end: bool = False, mode: str = "eval"):
        every = self.default_every if every is None else int(every)
        if every < 0:
            raise ValueError(f"{self.name}: every must be >= 0, got {every}")
        if mode not in MODES:
            raise ValueError(f"{self.name}: mode must be one of {MODES}, got {mode!r}")
        self.every = every
        self.at_end = bool(at_end)
        self.mode = mode

    def should_run(self, step: int) -> bool:
        """Scheduled after optimizer step ``step`` (0-based): steps every-1, 2·every-1, …"""
        return self.every > 0 and (step + 1) % self.every == 0

    @abstractmethod
    def compute(self, ctx: ProbeContext) -> Rows:
        """Measure; return rows per table (columns as lists). Called inside isolation."""

    @classmethod
    def options(cls) -> dict[str, Any]:
        """Keyword options ``__init__`` accepts, with their defaults (for ``--probe`` help)."""
        import inspect

        signature = inspect.signature(cls.__init__)
        return {
            name: param.default
            for name, param in signature.parameters.items()
            if name != "self" and param.kind not in (param.VAR_KEYWORD, param.VAR_POSITIONAL)
        }
