"""Forward-over-reverse Hessian-vector products: ``torch.func.jvp`` of ``torch.func.grad`` per
batch, weighted by batch size; ``matmat`` takes many vectors at once with ``vmap``."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import grad, jvp, vmap

from gradlens.analysis.hessian.hvp import HessianOperator

__all__ = ["ForwardOverReverseHVP"]


class ForwardOverReverseHVP(HessianOperator):
    """Hv = the directional derivative of ∇L along v, by forward-mode AD of the gradient."""

    method = "forward_over_reverse"

    def _hvp(self, v: list[Tensor]) -> list[Tensor]:
        primal = self._detached()
        tangent = dict(zip(self.names, v, strict=True))
        total = self._zeros()
        for batch, weight in self.objective.weighted_batches():
            hv = jvp(grad(self._loss_of(batch)), (primal,), (tangent,))[1]
            for t, name in zip(total, self.names, strict=True):
                t.add_(hv[name], alpha=weight)
        return total

    def matmat(self, vectors: Tensor) -> Tensor:
        """H @ vᵢ for each row of ``vectors`` (m, dim), vmapped where the model allows."""
        if vectors.shape[0] > 1 and self.world == 1:
            try:
                with self.context():
                    out = self._vmapped(vectors)
                self.count += vectors.shape[0]
                return out
            except Exception:
                pass  # e.g. BatchNorm in train mode under vmap: one at a time
        return super().matmat(vectors)

    def _vmapped(self, vectors: Tensor) -> Tensor:
        primal = self._detached()
        stacked = {
            n: x.reshape(vectors.shape[0], *shape)
            for n, x, shape in zip(
                self.names,
                vectors.to(self.device, self.dtype).split(self.numels, dim=1),
                self.shapes,
                strict=True,
            )
        }
        total = torch.zeros(vectors.shape[0], self.dim, dtype=self.dtype, device=self.device)
        for batch, weight in self.objective.weighted_batches():
            g = grad(self._loss_of(batch))
            hv = vmap(lambda t, g=g: jvp(g, (primal,), (t,))[1])(stacked)
            flat = torch.cat([hv[n].reshape(vectors.shape[0], -1) for n in self.names], dim=1)
            total.add_(flat, alpha=weight)
        return total.to(vectors.dtype)
