"""The base of the Hessian-vector product engines: v ↦ Hv for the loss of an
:class:`~gradlens.analysis.objective.Objective` at its current parameters, on flat vectors.

:class:`HessianOperator` is an :class:`~gradlens.functional.operator.Operator`: it holds the
parameter layout (flat vector ↔ per-parameter tensors), counts products, runs them under the
math attention backend when asked, and sums them over ranks in multi-process runs (weighted by
batch sizes, giving the Hessian of the global batch). An engine implements ``_hvp`` on
per-parameter tensors. Nothing here changes the model: run it inside ``Objective.isolated()``.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from abc import abstractmethod
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from gradlens._attention import math_attention
from gradlens.analysis.objective import Batch, Objective
from gradlens.functional.operator import BaseOperator
from gradlens.instrument.distributed import all_reduce_sum

__all__ = ["METHODS", "HessianOperator", "note", "say"]

METHODS = ("auto", "double_backward", "forward_over_reverse", "finite_difference")

Log = Callable[[str], None]


class HessianOperator(BaseOperator):
    """v ↦ Hv for the loss of ``objective`` (any float dtype in, the same dtype out).

    Args:
        objective: model, batches and mode.
        log: where to say what the engine decided (default: stderr / the package logger).
        math_attention: run under the math attention backend (fused attention kernels
            cannot be differentiated twice).
        world: > 1 in multi-process runs: each rank's product on its own batches is summed
            over ranks, weighted by batch sizes.

    Attributes:
        dim, dtype, device: of the flat parameter vector. count: products taken through
        ``__call__``/``matmat``. setup_count: products spent choosing the engine or planning
        the basis. method: the engine's name. selection: what ``choose_hvp`` measured.
    """

    method = ""

    def __init__(
        self,
        objective: Objective,
        *,
        log: Log | None = None,
        math_attention: bool = False,
        world: int = 1,
    ) -> None:
        if not objective.params:
            raise ValueError("the model has no trainable parameters")
        self.objective = objective
        self.params = objective.params
        self.names = objective.names
        self.shapes = [p.shape for p in self.params]
        self.numels = [p.numel() for p in self.params]
        self.dim = sum(self.numels)
        self.dtype = self.params[0].dtype
        self.device = self.params[0].device
        self.log = log
        self.math_attention = math_attention
        self.world = world
        self.count = 0
        self.setup_count = 0
        self.selection: dict[str, Any] = {"method": self.method, "seconds": {}, "fd_check": None}
        self._global_total = float(objective.total)
        if world > 1:
            total = torch.tensor([float(objective.total)], dtype=torch.float64, device=self.device)
            self._global_total = float(all_reduce_sum(total)[0])

    def _matvec(self, v: Tensor) -> Tensor:
        self.count += 1
        return self.product(v)

    def product(self, v: Tensor) -> Tensor:
        """H @ v without counting it in ``count`` (engine choice, memory planning)."""
        parts = self.split(v.to(self.device, self.dtype))
        with self.context():
            out = self._hvp(parts)
        flat = torch.cat([p.reshape(-1) for p in out])
        if self.world > 1:  # Σ_r (N_r / N) H_r v over ranks: the global batch's Hessian
            flat = all_reduce_sum(flat * self.objective.total) / self._global_total
        return flat.to(v.dtype)

    @abstractmethod
    def _hvp(self, v: list[Tensor]) -> list[Tensor]:
        """Hv per parameter, for ``v`` split per parameter (in the parameters' dtype)."""

    def reset(self) -> None:
        """Forget anything cached from earlier products (e.g. a gradient graph)."""

    def split(self, v: Tensor) -> list[Tensor]:
        """A flat vector as views shaped like the parameters."""
        return [x.view(shape) for x, shape in zip(v.split(self.numels), self.shapes, strict=True)]

    def unflatten(self, v: Tensor) -> dict[str, Tensor]:
        """A flat vector as a dict parameter name → tensor (in the parameters' dtype)."""
        return dict(zip(self.names, self.split(v.to(self.dtype)), strict=True))

    def module_blocks(self) -> dict[str, Tensor]:
        """Positions in the flat vector of each module's parameters (the module is a
        parameter's name up to its last dot), for :func:`~gradlens.functional.operator.restrict`."""
        offsets = [0]
        for n in self.numels:
            offsets.append(offsets[-1] + n)
        blocks: dict[str, list[Tensor]] = {}
        for i, name in enumerate(self.names):
            module = name.rsplit(".", 1)[0] if "." in name else name
            blocks.setdefault(module, []).append(torch.arange(offsets[i], offsets[i + 1]))
        return {module: torch.cat(parts).to(self.device) for module, parts in blocks.items()}

    def context(self) -> contextlib.AbstractContextManager[Any]:
        return math_attention() if self.math_attention else contextlib.nullcontext()

    def gradient_time(self) -> float:
        """Seconds for one plain gradient of the objective, with the default kernels (what a
        training step pays), for HVP/gradient cost ratios."""
        _sync(self.device)
        start = time.perf_counter()
        torch.autograd.grad(self.objective.loss(), self.params, allow_unused=True)
        _sync(self.device)
        return time.perf_counter() - start

    def say(self, message: str) -> None:
        """Something the user should know: to ``log`` when given, else stderr."""
        say(self.log, message)

    # -- shared by the engines -------------------------------------------------------------------

    def _loss_of(self, batch: Batch) -> Callable[[dict[str, Tensor]], Tensor]:
        return lambda params: self.objective.batch_loss(batch, params)

    def _detached(self) -> dict[str, Tensor]:
        return {n: p.detach() for n, p in zip(self.names, self.params, strict=True)}

    def _zeros(self) -> list[Tensor]:
        return [torch.zeros_like(p) for p in self.params]


def say(log: Log | None, message: str) -> None:
    """A warning-level message: to ``log`` when given, else stderr."""
    if log is not None:
        log(message)
    else:
        print(f"gradlens: {message}", file=sys.stderr)


def note(log: Log | None, message: str) -> None:
    """Routine information: to ``log`` when given, else the package logger."""
    if log is not None:
        log(message)
    else:
        logging.getLogger("gradlens.analysis.hessian").info(message)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
