"""One x axis for every chart of a page: the run's extent, the zoom, margins, findings shading.

Charts of a run share fixed margins and the run's step extent (half a step either side), so a
step sits at the same pixel column in each; ranges are in the units of the page's x axis
(steps, seconds since start, or local wall time) and convert to steps through the run's clock.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from gradlens.dashboard.data import RunData
from gradlens.dashboard.figures import Axes, x_values
from gradlens.dashboard.findings import FindingsService

__all__ = [
    "MARGIN",
    "SHADE",
    "align",
    "axis_keys",
    "finding_shades",
    "shade_ranges",
    "step_to_x",
    "to_steps",
    "x_extent",
]

# fixed margins on every chart: the plot areas line up, step for step
MARGIN = dict(l=200, r=170, t=40, b=40, autoexpand=False)
SHADE = {"error": "rgba(214, 39, 40, 0.10)", "warning": "rgba(255, 165, 0, 0.09)"}


def axis_keys(fig: go.Figure, kind: str) -> list[str]:
    """``fig``'s layout keys of ``kind`` (``xaxis`` or ``yaxis``): ``yaxis``, ``yaxis2``…"""
    pattern = re.compile(rf"{kind}\d*")
    return [k for k in fig.layout if pattern.fullmatch(k)] or [kind]


def align(fig: go.Figure, extent: list[Any] | None, xrange: Sequence[Any] | None) -> go.Figure:
    """The page's margins, the run's x extent (or the zoom) and a crosshair on ``fig``.

    The margins are fixed, so every axis's ``automargin`` (on in plotly_white) is turned off:
    it made the browser measure each tick label for margins that cannot move anyway.
    """
    if not fig.data:
        return fig
    top = fig.layout.margin.t if fig.layout.margin.t is not None else MARGIN["t"]
    bottom = fig.layout.margin.b if fig.layout.margin.b is not None else MARGIN["b"]
    shown = list(xrange) if isinstance(xrange, list | tuple) and len(xrange) == 2 else extent
    axis: dict[str, Any] = dict(
        showspikes=True, spikemode="across", spikesnap="cursor", spikethickness=1, spikedash="dot"
    )
    if shown is not None:
        axis.update(range=shown, autorange=False)
    heat = any(getattr(t, "type", "") == "heatmap" for t in fig.data)
    update: dict[str, Any] = {
        "hovermode": "closest" if heat else "x",  # curves: every trace's value at that x
        "margin": {**MARGIN, "t": max(top, 40), "b": max(bottom, 40)},
        "title": {"font": {"size": 14}, "x": 0.01, "xref": "container"},
    }
    keys = axis_keys(fig, "xaxis")
    update.update({k: {**axis, "automargin": False} for k in keys})  # one update: setters are slow
    update.update({k: {"automargin": False} for k in axis_keys(fig, "yaxis")})
    if "xaxis2" not in fig.layout:  # one chart: legend over it; subplots keep theirs
        update["legend"] = dict(orientation="h", x=0, y=1.0, yanchor="bottom", xanchor="left")
    fig.update_layout(update)
    return fig


def shade_ranges(fig: go.Figure, shades: Sequence[tuple[Any, Any, str]]) -> go.Figure:
    """Shaded x ranges behind ``fig``'s data (one layout update; ``add_vrect`` is slow)."""
    if not shades or not fig.data:
        return fig
    rects = [
        dict(
            type="rect",
            xref="x",
            yref="paper",
            x0=x0,
            x1=x1,
            y0=0,
            y1=1,
            fillcolor=colour,
            line_width=0,
            layer="below",
        )
        for x0, x1, colour in shades
    ]
    fig.update_layout(shapes=list(fig.layout.shapes or ()) + rects)
    return fig


def x_extent(data: RunData, axes: Axes) -> list[Any] | None:
    """The run's step range (half a step either side) in the units of ``axes``."""
    steps = []
    for metric in ("loss", "grad_norm"):
        frame = data.scalar(metric) if data.has("scalars") else pd.DataFrame()
        if not frame.empty:
            steps += [int(frame["step"].min()), int(frame["step"].max())]
    if not steps and data.has("layers"):
        matrix_steps = data.layer_matrix(data.metrics("layers")[0]).steps
        if len(matrix_steps):
            steps = [int(matrix_steps[0]), int(matrix_steps[-1])]
    if not steps:
        return None
    return step_to_x(data, axes, [min(steps) - 0.5, max(steps) + 0.5])


def step_to_x(data: RunData, axes: Axes, steps: Sequence[float]) -> list[Any]:
    if axes.xaxis == "step":
        return [float(s) for s in steps]
    frame = data.with_time(pd.DataFrame({"step": np.asarray(steps, dtype=np.float64)}))
    if frame["time"].isna().any():
        return [float(s) for s in steps]
    x = x_values(frame, axes)
    if axes.xaxis == "wall":
        return [str(pd.Timestamp(v)).replace("T", " ") for v in x]
    return [float(v) for v in x]


def to_steps(
    data: RunData, axes: Axes, xrange: Sequence[Any] | None
) -> tuple[float | None, float | None]:
    """An x range in the units of ``axes`` as steps (inverting the run's clock)."""
    if not isinstance(xrange, list | tuple) or len(xrange) != 2:
        return None, None
    try:
        if axes.xaxis == "step":
            return float(xrange[0]), float(xrange[1])
        clock = data.series("scalars", "time", index=0) if data.has("scalars") else None
        if clock is None or clock.empty:
            return None, None
        if axes.xaxis == "wall":  # local clock time, as x_values draws it
            start = data.run.start_time or 0.0
            local = datetime.now().astimezone().tzinfo
            seconds = [pd.Timestamp(v).tz_localize(local).timestamp() - start for v in xrange]
        else:
            seconds = [float(v) for v in xrange]
        steps = np.interp(seconds, clock["value"], clock["step"])
        return float(steps[0]) - 1, float(steps[1]) + 1
    except (TypeError, ValueError):
        return None, None


def finding_shades(
    findings: FindingsService, data: RunData, axes: Axes
) -> list[tuple[Any, Any, str]]:
    """(x0, x1, colour) over the steps of each warning and error of the run's report."""
    state = findings.state(data.run, start=False)
    if state.report is None:
        return []
    out = []
    for f in state.report.findings:
        if f.severity in SHADE and f.step_start is not None:
            end = f.step_end if f.step_end is not None else f.step_start
            x0, x1 = step_to_x(data, axes, [f.step_start - 0.5, end + 0.5])
            out.append((x0, x1, SHADE[f.severity]))
    return out
