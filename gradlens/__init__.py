"""gradlens: training diagnostics for PyTorch.

Record a run with ``gradlens watch train.py`` or ``with gradlens.Lens(model, opt): ...``;
read it back with ``gradlens.open_run(path).table("layers")``.

Names are imported lazily, so ``import gradlens.store`` (the dashboard, the report) does not
import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gradlens._version import __version__

__all__ = [  # noqa: RUF022 (grouped by purpose)
    # recording
    "Lens",
    "SpikeConfig",
    "log",
    # analysing a trained model
    "hessian_density",
    "hessian_eigenvalues",
    "hessian_trace",
    "loss_landscape",
    "neural_collapse",
    # reading
    "Run",
    "list_runs",
    "open_run",
    "open_runs",
    # errors
    "GradlensError",
    "RunNotFoundError",
    "TableError",
    "__version__",
]

_LAZY = {
    "Lens": "gradlens.lens",
    "hessian_density": "gradlens.analysis.hessian",
    "hessian_eigenvalues": "gradlens.analysis.hessian",
    "hessian_trace": "gradlens.analysis.hessian",
    "loss_landscape": "gradlens.analysis.landscape",
    "neural_collapse": "gradlens.analysis.collapse",
    "SpikeConfig": "gradlens.capture.spikes",
    "log": "gradlens.user_log",
    "Run": "gradlens.store",
    "list_runs": "gradlens.store",
    "open_run": "gradlens.store",
    "open_runs": "gradlens.store",
    "GradlensError": "gradlens.errors",
    "RunNotFoundError": "gradlens.errors",
    "TableError": "gradlens.errors",
}

if TYPE_CHECKING:
    from gradlens.analysis.collapse import neural_collapse
    from gradlens.analysis.hessian import hessian_density, hessian_eigenvalues, hessian_trace
    from gradlens.analysis.landscape import loss_landscape
    from gradlens.capture.spikes import SpikeConfig
    from gradlens.errors import GradlensError, RunNotFoundError, TableError
    from gradlens.lens import Lens
    from gradlens.store import Run, list_runs, open_run, open_runs
    from gradlens.user_log import log


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gradlens' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
