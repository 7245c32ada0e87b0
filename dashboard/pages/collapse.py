"""The collapse page: neural-collapse metrics; softmax-collapse fraction, logit gap, log Z."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go
from dash import Dash, Input, Output, dcc, html

from gradlens.dashboard.components import axes_from, controls, graph, guarded, message, nav
from gradlens.dashboard.context import AppContext
from gradlens.dashboard.figures import empty_figure
from gradlens.dashboard.figures_probes import collapse_figure, softmax_figure
from gradlens.errors import GradlensError
from gradlens.store import Run

__all__ = ["curves", "layout", "register"]


def layout(ctx: AppContext, run: Run, search: str | None = None) -> html.Div:
    """The page for ``run``: a notice per missing table."""
    name = run.path.name
    data = ctx.data(name)
    body: list[Any] = [nav(name, "collapse"), dcc.Store(id="run-name", data=name)]
    if not data.has("collapse") and not data.has("softmax"):
        body.append(
            message(
                "no collapse data in this run: record it with --probes standard or full",
                "warning",
            )
        )
        return html.Div(body)
    body += [controls(log_y=True), graph("collapse-graph"), graph("softmax-graph")]
    return html.Div(body)


def register(app: Dash, ctx: AppContext) -> None:
    @app.callback(
        Output("collapse-graph", "figure"),
        Output("softmax-graph", "figure"),
        Input("run-name", "data"),
        Input("smoothing", "value"),
        Input("xaxis", "value"),
        Input("logy", "value"),
        Input("refresh", "n_intervals"),
    )
    def _curves(name: str, smoothing: float, xaxis: str, logy: list[str], _: Any) -> Any:
        return curves(ctx, name, smoothing, xaxis, logy)


@guarded(2)
def curves(
    ctx: AppContext, name: str, smoothing: float, xaxis: str, logy: Sequence[str] | None
) -> tuple[go.Figure, go.Figure]:
    """Neural-collapse metrics and softmax-collapse signals over steps."""
    try:
        data = ctx.data(name)
    except GradlensError as exc:
        return empty_figure(str(exc)), empty_figure("")
    axes = axes_from(0.0, xaxis, logy, data.run.start_time)  # sparse probes: no smoothing
    nc = (
        collapse_figure(data.with_time(data.table("collapse")), axes)
        if data.has("collapse")
        else empty_figure("no neural-collapse data in this run")
    )
    soft = (
        softmax_figure(data.with_time(data.table("softmax")), axes)
        if data.has("softmax")
        else empty_figure("no softmax data in this run")
    )
    return nc, soft
