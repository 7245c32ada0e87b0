"""Hessian spectra of a trained model: top/bottom eigenpairs, trace, spectral density.

All three take ``(model, loss_fn, data)`` — ``data`` an ``(x, y)`` batch or an iterable of
them, ``loss_fn(output, y)`` (or ``None`` when the model returns its loss) — evaluate in an
explicit ``mode`` ("eval" by default: dropout off, BatchNorm on running statistics) and leave
the model exactly as they found it.

Example:
    >>> res = gradlens.hessian_eigenvalues(model, F.cross_entropy, (x, y), k=5)  # doctest: +SKIP
    >>> res.eigenvalues, res.residuals, res.hvps
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from gradlens.analysis.hessian.choose import choose_hvp
from gradlens.analysis.hessian.hvp import HessianOperator
from gradlens.analysis.hessian.spectra import EigenResult, density_runs, top_eigenpairs
from gradlens.analysis.objective import Objective, batches_from_data
from gradlens.functional.slq import Density
from gradlens.functional.trace import TraceResult, hutchinson, hutchpp

__all__ = [
    "hessian_density",
    "hessian_directions",
    "hessian_eigenvalues",
    "hessian_trace",
]


def _objective(
    model: nn.Module, loss_fn: Callable[..., Tensor] | None, data: Any, mode: str
) -> Objective:
    return Objective(model, batches_from_data(data, loss_fn), mode)


def _engine(objective: Objective, method: str) -> HessianOperator:
    engine = choose_hvp(objective, method)
    if not isinstance(engine, HessianOperator):
        raise ValueError("FSDP-sharded parameters: use the hessian probe under gradlens watch")
    return engine


def hessian_eigenvalues(
    model: nn.Module,
    loss_fn: Callable[..., Tensor] | None,
    data: Any,
    k: int = 5,
    which: str = "LA",
    tol: float = 1e-3,
    *,
    mode: str = "eval",
    method: str = "auto",
    max_iter: int | None = None,
    dtype: torch.dtype = torch.float32,
    basis_device: torch.device | str | None = None,
    max_basis: int | None = None,
    seed: int = 0,
) -> EigenResult:
    """The ``k`` wanted Hessian eigenpairs (``which``: LA largest, SA smallest, LM magnitude)
    by Lanczos with full reorthogonalisation, stopped when ‖Hv − λv‖ ≤ tol·|λ| for each.

    ``max_basis`` bounds the basis (thick restart); by default it is chosen from the memory
    left after a first product (see :func:`top_eigenpairs`)."""
    objective = _objective(model, loss_fn, data, mode)
    with objective.isolated():
        engine = _engine(objective, method)
        return top_eigenpairs(
            engine,
            k,
            which,
            tol,
            max_iter=max_iter,
            dtype=dtype,
            basis_device=basis_device,
            max_basis=max_basis,
            seed=seed,
        )


def hessian_directions(
    objective: Objective, k: int, *, seed: int = 0
) -> tuple[list[dict[str, Tensor]], list[float]]:
    """The top-``k`` Hessian eigenvectors (dicts parameter name → tensor, unit norm over all
    parameters) and eigenvalues of ``objective``, by Lanczos with the ``auto`` engine.

    Runs in its own ``objective.isolated()`` (nesting is fine), so the caller's RNG states
    and model are as before: the directions of a ``"hessian"`` landscape slice.
    """
    with objective.isolated():
        result = top_eigenpairs(_engine(objective, "auto"), k=k, which="LA", seed=seed)
    return list(result.eigenvectors), [float(v) for v in result.eigenvalues]


def hessian_trace(
    model: nn.Module,
    loss_fn: Callable[..., Tensor] | None,
    data: Any,
    *,
    estimator: str = "hutch++",
    tol: float = 1e-2,
    max_hvps: int = 200,
    sketch: int = 10,
    mode: str = "eval",
    method: str = "auto",
    seed: int = 0,
    eigen: EigenResult | None = None,
) -> TraceResult:
    """tr(H) with its standard error; stops when stderr ≤ tol·|estimate| or at ``max_hvps``.

    ``eigen``: an eigenvalue run on the same model and data (e.g. from
    :func:`hessian_eigenvalues`); its converged pairs are deflated — their part of the trace
    is Σλ, exact — and Hutch++ estimates the rest. ``result.reached`` is False when the
    budget could not bring the standard error down to ``tol``·|estimate|."""
    if estimator not in ("hutch++", "hutchinson"):
        raise ValueError(f"estimator must be 'hutch++' or 'hutchinson', got {estimator!r}")
    objective = _objective(model, loss_fn, data, mode)
    with objective.isolated():
        engine = _engine(objective, method)
        generator = torch.Generator().manual_seed(seed)
        if estimator == "hutchinson":
            return hutchinson(engine, tol=tol, max_hvps=max_hvps, generator=generator)
        known = eigen.converged_pairs(_EIGEN_TOL) if eigen is not None else None
        return hutchpp(
            engine, sketch=sketch, tol=tol, max_hvps=max_hvps, generator=generator, known=known
        )


_EIGEN_TOL = 1e-2  # eigenpairs this accurate are deflated (their error in Σλ is ~residual²)


def hessian_density(
    model: nn.Module,
    loss_fn: Callable[..., Tensor] | None,
    data: Any,
    *,
    runs: int = 4,
    steps: int = 80,
    sigma: float | None = None,
    points: int = 1000,
    mode: str = "eval",
    method: str = "auto",
    seed: int = 0,
) -> Density:
    """Spectral density by stochastic Lanczos quadrature: ``runs`` × ``steps`` HVPs."""
    objective = _objective(model, loss_fn, data, mode)
    with objective.isolated():
        engine = _engine(objective, method)
        return density_runs(engine, runs, steps, sigma=sigma, points=points, seed=seed)
