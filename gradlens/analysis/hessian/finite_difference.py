"""Hessian-vector products by a central difference of two gradients: any model whose gradient
exists (O(ε²) truncation error, ~1e-5–1e-4 relative in float32)."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.func import grad

from gradlens.analysis.hessian.hvp import HessianOperator, Log
from gradlens.analysis.objective import Objective

__all__ = ["FiniteDifferenceHVP"]


class FiniteDifferenceHVP(HessianOperator):
    """Hv ≈ (∇L(θ + εv̂) − ∇L(θ − εv̂))·‖v‖/(2ε), v̂ = v/‖v‖.

    ``fd_eps``: the step along the unit direction (default 5e-3 in float32, 1e-5 in float64).
    """

    method = "finite_difference"

    def __init__(
        self,
        objective: Objective,
        *,
        fd_eps: float | None = None,
        log: Log | None = None,
        math_attention: bool = False,
        world: int = 1,
    ) -> None:
        super().__init__(objective, log=log, math_attention=math_attention, world=world)
        self.fd_eps = fd_eps or (1e-5 if self.dtype == torch.float64 else 5e-3)

    def _hvp(self, v: list[Tensor]) -> list[Tensor]:
        norm = math.sqrt(sum(float((x.double() ** 2).sum()) for x in v))
        if norm == 0.0:
            return [torch.zeros_like(x) for x in v]
        eps = self.fd_eps / norm
        primal = self._detached()
        gradients = []
        for sign in (1.0, -1.0):
            shifted = {n: p + sign * eps * x for (n, p), x in zip(primal.items(), v, strict=True)}
            total = self._zeros()
            for batch, weight in self.objective.weighted_batches():
                g = grad(self._loss_of(batch))(shifted)
                for t, name in zip(total, self.names, strict=True):
                    t.add_(g[name], alpha=weight)
            gradients.append(total)
        return [(a - b) / (2 * eps) for a, b in zip(*gradients, strict=True)]
