"""Hessian spectra: HVP operators (one per engine, :func:`choose_hvp`), eigenpairs, trace and
spectral density. The pure algorithms are in ``gradlens.functional``.

Modules: ``hvp`` (the operator base), ``double_backward``, ``forward_over_reverse``,
``finite_difference``, ``sharded`` (the engines), ``choose``, ``spectra``, ``api``.
"""

from gradlens.analysis.hessian.api import (
    hessian_density,
    hessian_directions,
    hessian_eigenvalues,
    hessian_trace,
)
from gradlens.analysis.hessian.choose import choose_hvp
from gradlens.analysis.hessian.double_backward import DoubleBackwardHVP
from gradlens.analysis.hessian.finite_difference import FiniteDifferenceHVP
from gradlens.analysis.hessian.forward_over_reverse import ForwardOverReverseHVP
from gradlens.analysis.hessian.hvp import METHODS, HessianOperator
from gradlens.analysis.hessian.sharded import ShardedHVP
from gradlens.analysis.hessian.spectra import EigenResult, density_runs, top_eigenpairs

__all__ = [
    "METHODS",
    "DoubleBackwardHVP",
    "EigenResult",
    "FiniteDifferenceHVP",
    "ForwardOverReverseHVP",
    "HessianOperator",
    "ShardedHVP",
    "choose_hvp",
    "density_runs",
    "hessian_density",
    "hessian_directions",
    "hessian_eigenvalues",
    "hessian_trace",
    "top_eigenpairs",
]
