"""The curvature page: top-k eigenvalues, sharpness against 2/lr, trace, spectral density.

The three curves share the run's x extent, margins and zoom (linked as on the run page), with
the run's loss and gradient spikes along their bottom and its findings shaded. Probes are
sparse, so there is no smoothing control here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go
from dash import Dash, Input, Output, State, dcc, html

from gradlens.dashboard.components import (
    axes_from,
    axes_search,
    controls,
    graph,
    guarded,
    message,
    nav,
    read_state,
)
from gradlens.dashboard.context import AppContext
from gradlens.dashboard.figures import empty_figure
from gradlens.dashboard.figures_probes import (
    add_event_rug,
    density_figure,
    eigenvalues_figure,
    sharpness_figure,
    trace_figure,
)
from gradlens.dashboard.linked import register_linked_x
from gradlens.dashboard.xaxis import align, finding_shades, shade_ranges, x_extent
from gradlens.store import Run

__all__ = ["CHARTS", "curves", "density", "layout", "register"]

CHARTS = ("eig-graph", "sharpness-graph", "trace-graph")


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
        dcc.Store(id="curv-xrange"),
        dcc.Location(id="curv-url", refresh=False),  # the view, written to the query
        dcc.Store(id="curv-xsync"),
        controls(smoothing=False, state=read_state(search)),
        *(graph(g) for g in CHARTS),
    ]
    if steps:  # no spectrum: no empty section with a picker that picks nothing
        body += [
            html.H3("Spectral density"),
            dcc.Dropdown(id="density-step", options=steps, value=steps[-1], clearable=False),
            graph("density-graph"),
        ]
    return html.Div(body)


def register(app: Dash, ctx: AppContext) -> None:
    register_linked_x(app, "curv", CHARTS)

    @app.callback(
        Output("curv-url", "search"),
        Input("xaxis", "value"),
        Input("logy", "value"),
        prevent_initial_call=True,
    )
    def _url(xaxis: Any, logy: Any) -> str:
        return axes_search(xaxis, logy)

    @app.callback(
        Output("eig-graph", "figure"),
        Output("sharpness-graph", "figure"),
        Output("trace-graph", "figure"),
        Input("run-name", "data"),
        Input("xaxis", "value"),
        Input("logy", "value"),
        Input("tick", "data"),
        State("curv-xrange", "data"),
    )
    def _curves(name: str, xaxis: str, logy: list[str], _: Any, xrange: Any) -> Any:
        return curves(ctx, name, 0.0, xaxis, logy, xrange)

    @app.callback(
        Output("density-graph", "figure"),
        Input("run-name", "data"),
        Input("density-step", "value"),
        Input("tick", "data"),
    )
    def _density(name: str, step: int | None, _: Any) -> Any:
        return density(ctx, name, step)


@guarded(3)
def curves(
    ctx: AppContext,
    name: str,
    smoothing: float,
    xaxis: str,
    logy: Sequence[str] | None,
    xrange: Sequence[Any] | None = None,
) -> tuple[go.Figure, go.Figure, go.Figure]:
    """Eigenvalues, sharpness vs 2/lr and trace over steps (``smoothing`` is not applied)."""
    data = ctx.data(name)
    if not data.has("hessian"):
        blank = empty_figure("no hessian data in this run")
        return blank, blank, blank
    axes = axes_from(0.0, xaxis, logy, data.run.start_time)  # sparse probes: never smoothed
    hessian = data.with_time(data.table("hessian"))
    lr = data.scalar("lr") if data.has("scalars") else hessian.iloc[0:0]
    figs = (
        eigenvalues_figure(hessian, axes),
        sharpness_figure(hessian, lr, axes),
        trace_figure(hessian, axes),
    )
    extent = x_extent(data, axes)
    shades = finding_shades(ctx.findings, data, axes)
    events = data.events()
    clock = data.with_time(hessian[["step"]].drop_duplicates())
    for fig in figs:
        if not fig.data:
            continue
        add_event_rug(fig, events, axes, clock if not clock.empty else lr)
        align(fig, extent, xrange)
        shade_ranges(fig, shades)
    return figs


@guarded(1)
def density(ctx: AppContext, name: str, step: int | None) -> go.Figure:
    """The spectral density at ``step``."""
    data = ctx.data(name)
    if step is None or not data.has("spectrum"):
        return empty_figure("no spectral density in this run")
    return density_figure(data.table("spectrum", steps=(int(step), int(step))), int(step))
