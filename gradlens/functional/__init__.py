"""Pure tensor math: no hooks, no I/O, no model state. Probes wrap these functions.

Names are imported lazily. Modules: ``norms``, ``lanczos``, ``trace``, ``slq``, ``collapse``,
``softmax``, ``landscape``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [  # noqa: RUF022 (grouped by topic)
    # norms
    "NormPlan",
    "nonfinite_counts",
    "tensor_norms",
    # Hessian algorithms on an HVP callable (Lanczos: gradlens.functional.lanczos.lanczos)
    "hutchinson",
    "hutchpp",
    "gaussian_density",
    # neural collapse
    "NeuralCollapseAccumulator",
    "neural_collapse_metrics",
    # softmax collapse
    "SOFTMAX_STATS",
    "ghost_radius_from_derivative",
    "grad_weight_cosine",
    "softmax_collapse",
    "softmax_collapse_stats",
    # loss landscapes
    "filter_normalized_direction",
    "grid_coordinates",
    "roughness_index",
]

_MODULES = {
    "NormPlan": "norms",
    "nonfinite_counts": "norms",
    "tensor_norms": "norms",
    "hutchinson": "trace",
    "hutchpp": "trace",
    "gaussian_density": "slq",
    "NeuralCollapseAccumulator": "collapse",
    "neural_collapse_metrics": "collapse",
    "SOFTMAX_STATS": "softmax",
    "ghost_radius_from_derivative": "softmax",
    "grad_weight_cosine": "softmax",
    "softmax_collapse": "softmax",
    "softmax_collapse_stats": "softmax",
    "filter_normalized_direction": "landscape",
    "grid_coordinates": "landscape",
    "roughness_index": "landscape",
}

if TYPE_CHECKING:
    from gradlens.functional.collapse import NeuralCollapseAccumulator, neural_collapse_metrics
    from gradlens.functional.landscape import (
        filter_normalized_direction,
        grid_coordinates,
        roughness_index,
    )
    from gradlens.functional.norms import NormPlan, nonfinite_counts, tensor_norms
    from gradlens.functional.slq import gaussian_density
    from gradlens.functional.softmax import (
        SOFTMAX_STATS,
        ghost_radius_from_derivative,
        grad_weight_cosine,
        softmax_collapse,
        softmax_collapse_stats,
    )
    from gradlens.functional.trace import hutchinson, hutchpp


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module 'gradlens.functional' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"gradlens.functional.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
