"""Spectra of a Hessian operator: eigenpairs by Lanczos (with a basis planned from the memory
left after one product) and spectral density by stochastic Lanczos quadrature. The model-level
calls are in :mod:`gradlens.analysis.hessian.api`; the algorithms in ``gradlens.functional``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from gradlens.analysis.hessian.hvp import HessianOperator
from gradlens.functional.lanczos import LanczosResult, default_max_basis, lanczos
from gradlens.functional.slq import Density, gaussian_density

__all__ = ["FULL_BASIS_LIMIT", "EigenResult", "density_runs", "top_eigenpairs"]


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
    selection: dict[str, Any] = field(default_factory=dict)
    basis: str = ""

    def converged_pairs(self, tol: float) -> tuple[Tensor, Tensor]:
        """Flat eigenvectors (rows) and eigenvalues of the pairs with ‖Hv − λv‖ ≤ tol·|λ|
        (what a deflated trace may reuse)."""
        ok = self.residuals <= tol * self.eigenvalues.abs()
        return self.run.eigenvectors[ok.to(self.run.eigenvectors.device)], self.eigenvalues[ok]


def top_eigenpairs(
    engine: HessianOperator,
    k: int = 5,
    which: str = "LA",
    tol: float = 1e-3,
    *,
    max_iter: int | None = None,
    dtype: torch.dtype = torch.float32,
    basis_device: torch.device | str | None = None,
    max_basis: int | None = None,
    seed: int = 0,
) -> EigenResult:
    """Lanczos on an HVP engine (inside the caller's isolation).

    The basis is planned after a first product has shown what the HVP needs: every Krylov
    vector when that is small (fewest products), else a thick-restarted basis of
    ``max_basis`` (default ``max(2k + 10, 24)``) vectors next to the model, else — the last
    resort, said on stderr — that bounded basis on the CPU.
    """
    generator = torch.Generator().manual_seed(seed)
    if basis_device is None:
        basis_device, max_basis, basis = _basis_plan(engine, k, max_iter, dtype, max_basis)
    else:
        basis = f"{'bounded' if max_basis else 'full'} on {basis_device}"
    run = lanczos(
        engine,
        k=k,
        which=which,
        tol=tol,
        max_iter=max_iter,
        generator=generator,
        dtype=dtype,
        basis_device=basis_device,
        max_basis=max_basis,
    )
    vectors = [engine.unflatten(row) for row in run.eigenvectors]
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
        selection=dict(engine.selection),
        basis=basis,
    )


FULL_BASIS_LIMIT = 8 << 30  # bytes: above this an unbounded basis is not worth its memory


def _basis_plan(
    engine: HessianOperator,
    k: int,
    max_iter: int | None,
    dtype: torch.dtype,
    max_basis: int | None,
) -> tuple[torch.device, int | None, str]:
    """(device, max_basis, description) from the memory left after one product."""
    device = torch.device(engine.device)
    vector = engine.dim * torch.empty((), dtype=dtype).element_size()
    steps = min(engine.dim, max_iter if max_iter is not None else max(20, 10 * k + 40))
    bounded = max_basis or default_max_basis(k)
    available = _available_after_product(engine, device)
    if max_basis is None and (steps + 1) * vector <= min(available // 4, FULL_BASIS_LIMIT):
        return device, None, f"full ({steps + 1} vectors max) on {device.type}"
    if bounded * vector <= available // 2:
        return device, bounded, f"restarted ({bounded} vectors) on {device.type}"
    engine.say(
        f"a Lanczos basis of {bounded} vectors ({bounded * vector / 2**30:.1f} GiB) does not "
        f"fit next to the model ({available / 2**30:.1f} GiB free after a product): keeping it "
        f"on the CPU (slower reorthogonalisation, same answer)"
    )
    return torch.device("cpu"), bounded, f"restarted ({bounded} vectors) on cpu (offloaded)"


def _available_after_product(engine: HessianOperator, device: torch.device) -> int:
    """Bytes a basis may use on ``device``: measured after one product on CUDA (the
    allocator's free blocks count, the product's transient peak does not); MemAvailable on
    the host."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        v = torch.randn(
            engine.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64
        ).to(engine.device, engine.dtype)
        engine.product(v)
        engine.setup_count += 1
        del v
        torch.cuda.synchronize(device)
        transient = torch.cuda.max_memory_allocated(device) - before
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return max(0, int(free + cached - transient))
    return _host_available()


def _host_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    pages = os.sysconf("SC_AVPHYS_PAGES") if hasattr(os, "sysconf") else 0
    return int(pages * os.sysconf("SC_PAGE_SIZE")) if pages else 1 << 34


def density_runs(
    engine: HessianOperator,
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
    done = [run for run in reuse or [] if run.restarts == 0]  # a restart loses T
    steps = min(steps, engine.dim)
    while len(done) < runs:
        done.append(
            lanczos(
                engine,
                k=1,
                which="LA",
                tol=1e-12,
                max_iter=steps,
                min_iter=steps,
                generator=generator,
                dtype=torch.float64 if engine.dtype == torch.float64 else torch.float32,
            )
        )
    return gaussian_density(done, sigma=sigma, points=points)
