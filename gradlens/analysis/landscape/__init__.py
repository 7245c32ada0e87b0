"""Loss-landscape slices (see :mod:`gradlens.analysis.landscape.api` and
``docs/landscape.md``): directions, the batched evaluation engine, precision choice,
summaries and store rows."""

from gradlens.analysis.landscape.api import landscape, loss_landscape
from gradlens.analysis.landscape.directions import KINDS, filter_directions
from gradlens.analysis.landscape.precision import CHECK_POINTS
from gradlens.analysis.landscape.slice import landscape_rows

__all__ = [
    "CHECK_POINTS",
    "KINDS",
    "filter_directions",
    "landscape",
    "landscape_rows",
    "loss_landscape",
]
