"""Hessian-vector products of FSDP2-sharded models (parameters are DTensor shards).

Each rank holds a slice of every vector. A product is a central difference of two gradients
computed by the model's own sharded backward — perturb the local shards by ±εv, run forward
and ``backward()`` (FSDP2 all-gathers the parameters and reduce-scatters the gradients, so
each rank receives its slice of the global batch's gradient) — and Lanczos sums its inner
products over ranks. Every rank runs the same sequence of collectives.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gradlens.analysis.objective import Objective
from gradlens.functional.operator import BaseOperator
from gradlens.instrument.distributed import all_reduce_sum, local

__all__ = ["ShardedHVP"]


class ShardedHVP(BaseOperator):
    """v ↦ (Hv)'s local slice, for flat local slices v (float32 or float64).

    ``dim`` is the global dimension and ``local_dim`` this rank's slice; pass ``allreduce``
    to Lanczos so its inner products are summed over ranks.
    """

    method = "finite_difference (sharded)"
    math_attention = False
    setup_count = 0

    def __init__(self, objective: Objective, *, fd_eps: float = 5e-3) -> None:
        self.objective = objective
        self.params = objective.params
        self.locals = [local(p.detach()) for p in self.params]
        self.numels = [t.numel() for t in self.locals]
        self.local_dim = sum(self.numels)
        self.device = self.locals[0].device
        self.dtype = self.locals[0].dtype
        self.fd_eps = fd_eps
        self.count = 0
        total = torch.tensor([float(self.local_dim)], dtype=torch.float64, device=self.device)
        self.dim = int(all_reduce_sum(total)[0])

    def allreduce(self, partial: Tensor) -> Tensor:
        return all_reduce_sum(partial)

    def _matvec(self, v: Tensor) -> Tensor:
        self.count += 1
        norm = math.sqrt(float(self.allreduce((v.double() @ v.double()).reshape(1))[0]))
        if norm == 0.0:
            return torch.zeros_like(v)
        eps = self.fd_eps / norm
        parts = v.to(self.dtype).split(self.numels)
        grads = []
        with torch.no_grad():
            saved = [t.clone() for t in self.locals]
        for sign in (1.0, -1.0):
            with torch.no_grad():
                for t, s, d in zip(self.locals, saved, parts, strict=True):
                    t.copy_(s).add_(d.view_as(t), alpha=sign * eps)
            for p in self.params:
                p.grad = None
            self.objective.loss().backward()
            grads.append(
                torch.cat(
                    [
                        local(p.grad).reshape(-1)
                        if p.grad is not None
                        else torch.zeros_like(t).reshape(-1)
                        for p, t in zip(self.params, self.locals, strict=True)
                    ]
                )
            )
        with torch.no_grad():
            for t, s in zip(self.locals, saved, strict=True):
                t.copy_(s)
        for p in self.params:
            p.grad = None
        return ((grads[0] - grads[1]) / (2 * eps)).to(v.dtype)
