"""Spectral density by stochastic Lanczos quadrature (SLQ).

Each Lanczos run from a random unit vector q gives a Gauss quadrature of the spectral measure
seen from q: nodes θ_i (eigenvalues of the tridiagonal T) and weights τ_i = (first component
of T's i-th eigenvector)². Averaging runs estimates the density of eigenvalues; smoothing the
nodes with a Gaussian of width σ gives a curve that integrates to 1 and whose first moment is
the average of qᵀHq, an unbiased estimate of tr(H)/n.

References: Lin, Saad & Yang (2016), *Approximating spectral densities of large matrices*;
Ghorbani, Krishnan & Xiao (2019), *An investigation into neural net optimization via Hessian
eigenvalue density*; Papyan (2020).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from gradlens.functional.lanczos import LanczosResult, tridiagonal_eigh

__all__ = ["Density", "gaussian_density", "quadrature"]


@dataclass
class Density:
    """Quadrature per run and a smoothed density on a grid."""

    nodes: list[Tensor]  # per run, ascending
    weights: list[Tensor]  # per run, summing to 1
    grid: Tensor
    density: Tensor
    sigma: float

    @property
    def first_moment(self) -> float:
        """Σ τθ averaged over runs: an estimate of tr(H)/n."""
        return float(
            sum(float((w * x).sum()) for x, w in zip(self.nodes, self.weights, strict=True))
            / len(self.nodes)
        )


def quadrature(run: LanczosResult) -> tuple[Tensor, Tensor]:
    """Gauss quadrature nodes and weights of one Lanczos run (from its tridiagonal)."""
    theta, s = tridiagonal_eigh(run.alpha, run.beta)
    return theta, s[0] ** 2


def gaussian_density(
    runs: Sequence[LanczosResult],
    *,
    sigma: float | None = None,
    points: int = 1000,
    padding: float = 0.05,
) -> Density:
    """Average the runs' quadratures and smooth them on a grid.

    ``sigma`` defaults to 1% of the node range. The grid spans the nodes plus ``padding`` of
    the range and at least 5σ on either side, so the smoothed density integrates to 1 up to
    the grid resolution.
    """
    if not runs:
        raise ValueError("need at least one Lanczos run")
    pairs = [quadrature(run) for run in runs]
    nodes = [x for x, _ in pairs]
    weights = [w / w.sum() for _, w in pairs]
    everything = torch.cat(nodes)
    lo, hi = float(everything.min()), float(everything.max())
    span = hi - lo if hi > lo else max(abs(hi), 1.0)
    sigma = sigma if sigma is not None else 0.01 * span
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    margin = max(padding * span, 5 * sigma)
    grid = torch.linspace(lo - margin, hi + margin, points, dtype=torch.float64)
    density = torch.zeros_like(grid)
    norm = 1.0 / (math.sqrt(2 * math.pi) * sigma * len(runs))
    for x, w in zip(nodes, weights, strict=True):
        density += norm * (
            w[None, :] * torch.exp(-0.5 * ((grid[:, None] - x[None, :]) / sigma) ** 2)
        ).sum(dim=1)
    return Density(nodes, weights, grid, density, sigma)
