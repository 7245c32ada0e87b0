"""Hessian spectra: HVP engines, eigenpairs, trace and spectral density (issue: Lanczos on
Hessian-vector products). The pure algorithms are in ``gradlens.functional``."""

from gradlens.hessian.api import (
    EigenResult,
    density_runs,
    hessian_density,
    hessian_eigenvalues,
    hessian_trace,
    top_eigenpairs,
)
from gradlens.hessian.hvp import HVP, METHODS

__all__ = [
    "HVP",
    "METHODS",
    "EigenResult",
    "density_runs",
    "hessian_density",
    "hessian_eigenvalues",
    "hessian_trace",
    "top_eigenpairs",
]
