"""The curvature page: top-k eigenvalues, sharpness against 2/lr, trace, spectral density."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go
from dash import Dash, Input, Output, dcc, html

from gradlens.dashboard.components import axes_from, controls, graph, guarded, message, nav
from gradlens.dashboard.context import AppContext
from gradlens.dashboard.figures import empty_figure
from gradlens.dashboard.figures_probes import (
    density_figure,
    eigenvalues_figure,
    sharpness_figure,
    trace_figure,
)
from gradlens.errors import GradlensError
from gradlens.store import Run

__all__ = ["curves", "density", "layout", "register"]


def layout(ctx: AppContext, run: Run, search: str | None = None) -> html.Div:
    """The page for ``run``: a notice instead of graphs when it has no Hessian data."""
    name = run.path.name
    data = ctx.data(name)
    body: list[Any] = [nav(name, "curvature"), dcc.Store(id="run-name", data=name)]
    if not data.has("hessian") and not data.has("spectrum"):
        body.append(
            message(
                "no hessian data in this run: record it with --probes standard or full",
                "warning",
            )
        )
        return html.Div(body)
    steps = data.steps_of("spectrum")
    body += [
        controls(),
        graph("eig-graph"),
        graph("sharpness-graph"),
        graph("trace-graph"),
        html.H3("Spectral density"),
        dcc.Dropdown(
            id="density-step",
            options=steps,
            value=steps[-1] if steps else None,
            clearable=False,
            placeholder="no spectrum recorded",
        ),
        graph("density-graph"),
    ]
    return html.Div(body)


def register(app: Dash, ctx: AppContext) -> None:
    @app.callback(
        Output("eig-graph", "figure"),
        Output("sharpness-graph", "figure"),
        Output("trace-graph", "figure"),
        Input("run-name", "data"),
        Input("smoothing", "value"),
        Input("xaxis", "value"),
        Input("logy", "value"),
        Input("refresh", "n_intervals"),
    )
    def _curves(name: str, smoothing: float, xaxis: str, logy: list[str], _: Any) -> Any:
        return curves(ctx, name, smoothing, xaxis, logy)

    @app.callback(
        Output("density-graph", "figure"),
        Input("run-name", "data"),
        Input("density-step", "value"),
        Input("refresh", "n_intervals"),
    )
    def _density(name: str, step: int | None, _: Any) -> Any:
        return density(ctx, name, step)


@guarded(3)
def curves(
    ctx: AppContext, name: str, smoothing: float, xaxis: str, logy: Sequence[str] | None
) -> tuple[go.Figure, go.Figure, go.Figure]:
    """Eigenvalues, sharpness vs 2/lr and trace over steps."""
    try:
        data = ctx.data(name)
    except GradlensError as exc:
        return empty_figure(str(exc)), empty_figure(""), empty_figure("")
    if not data.has("hessian"):
        blank = empty_figure("no hessian data in this run")
        return blank, blank, blank
    # probes are sparse: smoothing them would blur the few points there are
    axes = axes_from(0.0, xaxis, logy, data.run.start_time)
    hessian = data.with_time(data.table("hessian"))
    lr = data.scalar("lr") if data.has("scalars") else hessian.iloc[0:0]
    return (
        eigenvalues_figure(hessian, axes),
        sharpness_figure(hessian, lr, axes),
        trace_figure(hessian, axes),
    )


@guarded(1)
def density(ctx: AppContext, name: str, step: int | None) -> go.Figure:
    """The spectral density at ``step``."""
    try:
        data = ctx.data(name)
    except GradlensError as exc:
        return empty_figure(str(exc))
    if step is None or not data.has("spectrum"):
        return empty_figure("no spectral density in this run")
    return density_figure(data.table("spectrum", steps=(int(step), int(step))), int(step))
