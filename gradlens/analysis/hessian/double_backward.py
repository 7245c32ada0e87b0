"""Reverse-over-reverse Hessian-vector products.

With one batch the gradient graph is built once and reused by every product (only the second
backward runs per HVP); with several batches each product recomputes forward + backward per
batch, weighted by batch size.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gradlens.analysis.hessian.hvp import HessianOperator
from gradlens.analysis.objective import Batch

__all__ = ["DoubleBackwardHVP"]


class DoubleBackwardHVP(HessianOperator):
    """Hv = ∂(∇L · v)/∂θ by a second ``torch.autograd.grad`` through the gradient graph."""

    method = "double_backward"
    _graph: tuple[Tensor, ...] | None = None

    def reset(self) -> None:
        self._graph = None  # e.g. built under other attention kernels: not reusable

    def _hvp(self, v: list[Tensor]) -> list[Tensor]:
        batches = self.objective.batches
        if len(batches) == 1:
            if self._graph is None:
                self._graph = self._first(None)
            return self._second(self._graph, v, retain=True)
        total = self._zeros()
        for batch, weight in self.objective.weighted_batches():
            part = self._second(self._first(batch), v, retain=False)
            for t, h in zip(total, part, strict=True):
                t.add_(h, alpha=weight)
        return total

    def _first(self, batch: Batch | None) -> tuple[Tensor, ...]:
        loss = self.objective.loss() if batch is None else self.objective.batch_loss(batch)
        return torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)

    def _second(self, grads: tuple[Tensor, ...], v: list[Tensor], retain: bool) -> list[Tensor]:
        used = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
        out = self._zeros()
        if used:
            results = torch.autograd.grad(
                [grads[i] for i in used],
                self.params,
                grad_outputs=[v[i] for i in used],
                retain_graph=retain,
                allow_unused=True,
            )
            for i, r in enumerate(results):
                if r is not None:
                    out[i] = r
        return out
