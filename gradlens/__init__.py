"""gradlens: training diagnostics for PyTorch.

Record a run with ``gradlens watch train.py`` or ``with gradlens.Lens(model, opt): ...``;
read it back with ``gradlens.open_run(path).table("layers")``.
"""

from gradlens._version import __version__
from gradlens.capture.spikes import SpikeConfig
from gradlens.errors import GradlensError, RunNotFoundError, TableError
from gradlens.lens import Lens
from gradlens.store import Run, list_runs, open_run

__all__ = [  # noqa: RUF022 (grouped by purpose)
    # recording
    "Lens",
    "SpikeConfig",
    # reading
    "Run",
    "list_runs",
    "open_run",
    # errors
    "GradlensError",
    "RunNotFoundError",
    "TableError",
    "__version__",
]
