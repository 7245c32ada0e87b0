"""Hessian spectra: HVP engines, eigenpairs, trace and spectral density (issue: Lanczos on
Hessian-vector products). The pure algorithms are in ``gradlens.functional``."""

from gradlens.analysis.hessian.api import (
    EigenResult,
    density_runs,
    hessian_density,
    hessian_eigenvalues,
    hessian_trace,
    top_eigenpairs,
)
from gradlens.analysis.hessian.hvp import HVP, METHODS

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
