"""The landscape page: 1-D curves, 2-D contour and 3-D surface at a chosen step."""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go
from dash import Dash, Input, Output, dcc, html

from gradlens.dashboard.components import graph, guarded, message, nav, read_state, table
from gradlens.dashboard.context import AppContext
from gradlens.dashboard.figures import empty_figure
from gradlens.dashboard.figures_probes import (
    landscape_1d_figure,
    landscape_contour_figure,
    landscape_slices,
    landscape_surface_figure,
)
from gradlens.errors import GradlensError
from gradlens.store import Run

__all__ = ["layout", "register", "slices"]


def layout(ctx: AppContext, run: Run, search: str | None = None) -> html.Div:
    """The page for ``run``: a notice instead of graphs when it has no landscape data."""
    name = run.path.name
    data = ctx.data(name)
    body: list[Any] = [nav(name, "landscape"), dcc.Store(id="run-name", data=name)]
    if not data.has("landscape"):
        body.append(
            message("no landscape data in this run: record it with --probes full", "warning")
        )
        return html.Div(body)
    steps = data.steps_of("landscape")
    metrics = [m for m in data.metrics("landscape") if m in ("loss", "accuracy")] or ["loss"]
    dims = landscape_slices(data.table("landscape"))
    planes = [s for s, dim in dims.items() if dim == 2]
    lines = [s for s, dim in dims.items() if dim == 1]
    body += [
        html.Div(
            [
                html.Label("step"),
                dcc.Dropdown(id="landscape-step", options=steps, value=steps[-1], clearable=False),
                html.Label("metric"),
                dcc.Dropdown(
                    id="landscape-metric", options=metrics, value=metrics[0], clearable=False
                ),
                html.Label("2-D slice"),
                dcc.Dropdown(
                    id="landscape-plane",
                    options=planes,
                    value=planes[0] if planes else None,
                    placeholder="no 2-D slice",
                    clearable=False,
                ),
                dcc.Checklist(
                    id="landscape-3d",
                    options=[{"label": "3-D surface", "value": "3d"}],
                    value=["3d"] if read_state(search).get("surface") == "1" else [],
                    inline=True,
                ),
            ],
            className="pickers",
        ),
        # the 2-D slice first: it is what a landscape probe is for
        html.Div(
            [graph("landscape-contour-graph"), graph("landscape-surface-graph")],
            className="pair",
            style={} if planes else {"display": "none"},
        ),
        html.Div(graph("landscape-1d-graph"), style={} if lines else {"display": "none"}),
        html.Div(id="landscape-summary"),
    ]
    return html.Div(body)


def register(app: Dash, ctx: AppContext) -> None:
    @app.callback(
        Output("landscape-1d-graph", "figure"),
        Output("landscape-contour-graph", "figure"),
        Output("landscape-surface-graph", "figure"),
        Output("landscape-summary", "children"),
        Input("run-name", "data"),
        Input("landscape-step", "value"),
        Input("landscape-metric", "value"),
        Input("landscape-plane", "value"),
        Input("landscape-3d", "value"),
        Input("tick", "data"),
    )
    def _slices(
        name: str, step: int | None, metric: str | None, plane: str | None, shown: Any, _: Any
    ) -> Any:
        return slices(ctx, name, step, metric or "loss", plane, surface="3d" in (shown or []))


@guarded(3, (None,))
def slices(
    ctx: AppContext,
    name: str,
    step: int | None,
    metric: str,
    plane: str | None = None,
    surface: bool = True,
) -> tuple[go.Figure, go.Figure, go.Figure, Any]:
    """The three views of the slices at ``step`` and the summary metrics (roughness, ...).

    ``surface=False`` leaves the 3-D view out: WebGL takes seconds to start in a browser
    without a GPU, so the page opens on the contour and draws the surface when asked.
    """
    try:
        data = ctx.data(name)
    except GradlensError as exc:
        blank = empty_figure(str(exc))
        return blank, blank, blank, None
    if step is None or not data.has("landscape"):
        blank = empty_figure("no landscape data in this run")
        return blank, blank, blank, None
    rows = data.table("landscape", steps=(int(step), int(step)))
    summary = rows[rows["alpha"].isna()]
    rows_shown = [
        [str(r.slice), str(r.metric), f"{r.value:.4g}" if np.isfinite(r.value) else "-"]
        for r in summary.itertuples()
    ]
    return (
        landscape_1d_figure(rows, metric),
        landscape_contour_figure(rows, metric, plane),
        landscape_surface_figure(rows, metric, plane)
        if surface
        else empty_figure("tick “3-D surface” to draw the slice in 3-D"),
        table(["slice", "summary", "value"], rows_shown, "landscape-summary-rows")
        if rows_shown
        else None,
    )
