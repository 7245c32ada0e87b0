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
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from gradlens.functional.lanczos import LanczosResult, lanczos
from gradlens.functional.slq import Density, gaussian_density
from gradlens.functional.trace import TraceResult, hutchinson, hutchpp
from gradlens.hessian.hvp import HVP
from gradlens.objective import Objective, batches_from_data

__all__ = [
    "EigenResult",
    "hessian_density",
    "hessian_eigenvalues",
    "hessian_trace",
    "top_eigenpairs",
]


@dataclass
class EigenResult:
    """Eigenpairs with their residuals ‖Hv − λv‖ and the HVPs they cost.

    ``eigenvectors`` are dicts parameter name → tensor (unit norm over all parameters).
    ``lambda_min``/``lambda_min_residual`` come from the same Krylov space (an estimate; its
    residual says how good). ``hvps`` excludes the ``setup_hvps`` spent choosing the engine.
    """

    eigenvalues: Tensor
    residuals: Tensor
    eigenvectors: list[dict[str, Tensor]]
    hvps: int
    setup_hvps: int
    converged: bool
    method: str
    lambda_min: float
    lambda_min_residual: float
    run: LanczosResult


def _objective(
    model: nn.Module, loss_fn: Callable[..., Tensor] | None, data: Any, mode: str
) -> Objective:
    return Objective(model, batches_from_data(data, loss_fn), mode)


def top_eigenpairs(
    engine: HVP,
    k: int = 5,
    which: str = "LA",
    tol: float = 1e-3,
    *,
    max_iter: int | None = None,
    dtype: torch.dtype = torch.float32,
    basis_device: torch.device | str | None = None,
    seed: int = 0,
) -> EigenResult:
    """Lanczos on an HVP engine (inside the caller's isolation).

    The basis lives next to the model unless it would take more than half of the free device
    memory; then it is offloaded to the CPU (slower reorthogonalisation, same answer).
    """
    generator = torch.Generator().manual_seed(seed)
    if basis_device is None:
        basis_device = _basis_device(engine, k, max_iter, dtype)
    run = lanczos(
        engine,
        engine.dim,
        k,
        which,
        tol,
        max_iter,
        generator=generator,
        dtype=dtype,
        device=engine.device,
        basis_device=basis_device,
    )
    vectors = [
        dict(zip(engine.names, engine._split(row.to(engine.dtype)), strict=True))
        for row in run.eigenvectors
    ]
    return EigenResult(
        eigenvalues=run.eigenvalues.to(torch.float64),
        residuals=run.residuals.to(torch.float64),
        eigenvectors=vectors,
        hvps=run.hvps,
        setup_hvps=engine.setup_count,
        converged=run.converged,
        method=engine.method,
        lambda_min=float(run.ritz[0]),
        lambda_min_residual=float(run.ritz_residuals[0]),
        run=run,
    )


def _basis_device(engine: HVP, k: int, max_iter: int | None, dtype: torch.dtype) -> torch.device:
    device = torch.device(engine.device)
    if device.type != "cuda":
        return device
    steps = min(engine.dim, max_iter if max_iter is not None else max(20, 10 * k + 40))
    needed = (steps + 1) * engine.dim * torch.empty((), dtype=dtype).element_size()
    free, _ = torch.cuda.mem_get_info(device)
    if needed <= free // 2:
        return device
    engine._say(
        f"Lanczos basis of {needed / 2**30:.1f} GiB does not fit next to the model "
        f"({free / 2**30:.1f} GiB free): keeping it on the CPU"
    )
    return torch.device("cpu")


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
    seed: int = 0,
) -> EigenResult:
    """The ``k`` wanted Hessian eigenpairs (``which``: LA largest, SA smallest, LM magnitude)
    by Lanczos with full reorthogonalisation, stopped when ‖Hv − λv‖ ≤ tol·|λ| for each."""
    objective = _objective(model, loss_fn, data, mode)
    with objective.isolated():
        engine = HVP(objective, method)
        return top_eigenpairs(
            engine,
            k,
            which,
            tol,
            max_iter=max_iter,
            dtype=dtype,
            basis_device=basis_device,
            seed=seed,
        )


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
) -> TraceResult:
    """tr(H) with its standard error; stops when stderr ≤ tol·|estimate| or at ``max_hvps``."""
    if estimator not in ("hutch++", "hutchinson"):
        raise ValueError(f"estimator must be 'hutch++' or 'hutchinson', got {estimator!r}")
    objective = _objective(model, loss_fn, data, mode)
    with objective.isolated():
        engine = HVP(objective, method)
        generator = torch.Generator().manual_seed(seed)
        common: dict[str, Any] = dict(
            tol=tol,
            max_hvps=max_hvps,
            matmat=engine.matmat,
            generator=generator,
            dtype=engine.dtype,
            device=engine.device,
        )
        if estimator == "hutchinson":
            return hutchinson(engine, engine.dim, **common)
        return hutchpp(engine, engine.dim, sketch=sketch, **common)


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
        engine = HVP(objective, method)
        return density_runs(engine, runs, steps, sigma=sigma, points=points, seed=seed)


def density_runs(
    engine: HVP,
    runs: int,
    steps: int,
    *,
    sigma: float | None = None,
    points: int = 1000,
    seed: int = 0,
    reuse: list[LanczosResult] | None = None,
) -> Density:
    """SLQ on an engine; ``reuse`` adds Krylov runs already made (e.g. the eigenvalue run)."""
    if runs < 1 or steps < 2:
        raise ValueError(f"need runs >= 1 and steps >= 2, got {runs}, {steps}")
    generator = torch.Generator().manual_seed(seed + 1)
    done = list(reuse or [])
    steps = min(steps, engine.dim)
    while len(done) < runs:
        done.append(
            lanczos(
                engine,
                engine.dim,
                1,
                "LA",
                1e-12,
                steps,
                min_iter=steps,
                generator=generator,
                dtype=torch.float64 if engine.dtype == torch.float64 else torch.float32,
                device=engine.device,
            )
        )
    return gaussian_density(done, sigma=sigma, points=points)
