"""A landscape slice's summaries and store rows: slope and curvature at the centre, the
roughness index, direction norms and cosine, the settings, and ``landscape`` table rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from gradlens.analysis.landscape.directions import Direction, Directions
from gradlens.analysis.landscape.evaluate import Evaluated
from gradlens.functional.landscape import central_differences, roughness_index
from gradlens.store.rows import long_rows

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Options", "check", "landscape_rows", "pair", "settings", "summaries"]


@dataclass(frozen=True)
class Options:
    """What a slice was asked for, besides its axes."""

    seed: int = 0
    norm: str = "filter"
    ignore: str = "biasbn"
    orthogonalize: bool = False
    roughness: int = 8
    batch_points: int | None = None
    dtype: torch.dtype | None = None
    channels_last: bool = False


def pair(value: Any, dims: int, what: str) -> list[Any]:
    values = list(value) if isinstance(value, tuple | list) else [value] * dims
    if len(values) != dims:
        raise ValueError(f"{what} needs {dims} values for dims={dims}, got {len(values)}")
    return values


def check(dims: int, steps: list[int], options: Options) -> None:
    if dims not in (1, 2):
        raise ValueError(f"dims must be 1 or 2, got {dims}")
    for s in steps:
        if int(s) < 3:
            raise ValueError(f"steps must be at least 3 (curvature needs neighbours), got {s}")
    if options.roughness < 0 or options.roughness == 1:
        raise ValueError(f"roughness needs 0 or at least 2 lines, got {options.roughness}")
    if options.batch_points is not None and options.batch_points < 1:
        raise ValueError(f"batch_points must be >= 1, got {options.batch_points}")


def _axis_summary(frame: pd.DataFrame, coords: list[Tensor]) -> dict[str, dict[str, float]]:
    """Slope and curvature at the centre along each axis (the lines through the centre)."""
    slope, curvature = {}, {}
    loss = torch.tensor(frame["loss"].to_numpy())
    if len(coords) == 1:
        lines = {"alpha": loss}
    else:
        grid = loss.reshape(len(coords[0]), len(coords[1]))
        lines = {"alpha": grid[:, len(coords[1]) // 2], "beta": grid[len(coords[0]) // 2, :]}
    for (axis, line), c in zip(lines.items(), coords, strict=True):
        slope[axis], curvature[axis] = central_differences(line, c)
    return {"slope": slope, "curvature": curvature}


def _norm(vector: Direction) -> float:
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in vector.values()))


def _cosine(a: Direction, b: Direction) -> float:
    dot = sum(float((t.double() * b[n].double()).sum()) for n, t in a.items() if n in b)
    denominator = _norm(a) * _norm(b)
    return dot / denominator if denominator > 0 else math.nan


def settings(options: Options) -> dict[str, Any]:
    dtype = str(options.dtype).removeprefix("torch.") if options.dtype else "float32"
    return {
        "seed": options.seed,
        "norm": options.norm,
        "ignore": options.ignore,
        "orthogonalize": options.orthogonalize,
        "dtype": dtype,
    }


def summaries(
    frame: pd.DataFrame,
    coords: list[Tensor],
    values: Evaluated,
    variations: list[float],
    found: Directions,
) -> dict[str, Any]:
    return {
        "centre_loss": float(values.loss[values.loss.numel() // 2]),
        **_axis_summary(frame, coords),
        "roughness": roughness_index(variations),
        "roughness_variations": variations,
        "direction_norms": [_norm(v) for v in found.vectors],
        "cosine": _cosine(*found.vectors) if len(found.vectors) == 2 else math.nan,
        "eigenvalues": found.eigenvalues,
        "nonfinite": int((~torch.isfinite(values.loss)).sum()),
        "engine": values.engine,
        "batch_points": values.batch_points,
        "fallback": values.fallback,
        "autotune": values.autotune,
    }


def landscape_rows(frame: pd.DataFrame, step: int) -> dict[str, dict[str, list[Any]]]:
    """``landscape`` table rows for a slice: per point loss (and accuracy), then summaries.

    Summary metrics (``roughness``, ``slope_<axis>``, ``curvature_<axis>``, ``nonfinite``)
    have NaN coordinates.
    """
    attrs = frame.attrs
    metrics = ["loss"] + (["accuracy"] if frame["accuracy"].notna().any() else [])
    columns: dict[str, list[Any]] = {"metric": [], "alpha": [], "beta": [], "value": []}
    for metric in metrics:
        columns["metric"] += [metric] * len(frame)
        columns["alpha"] += frame["alpha"].tolist()
        columns["beta"] += frame["beta"].tolist()
        columns["value"] += frame[metric].tolist()
    summary = {"roughness": attrs["roughness"], "nonfinite": float(attrs["nonfinite"])}
    if "check_error" in attrs:  # |loss − float32 loop| on the check points
        summary["check_error"] = attrs["check_error"]
    for kind in ("slope", "curvature"):
        summary.update({f"{kind}_{axis}": v for axis, v in attrs[kind].items()})
    for metric, value in summary.items():
        columns["metric"].append(metric)
        columns["alpha"].append(math.nan)
        columns["beta"].append(math.nan)
        columns["value"].append(float(value))
    return {"landscape": long_rows("landscape", step, slice=attrs["slice"], **columns)}
