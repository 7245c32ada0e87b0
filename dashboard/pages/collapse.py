"""The collapse page: neural-collapse metrics by family; softmax-collapse signals.

Both charts share the run's x extent, margins and zoom; log y applies to every panel of both.
Probes are sparse, so there is no smoothing control here.
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
from gradlens.dashboard.figures_probes import COUNTS, collapse_figure, softmax_figure
from gradlens.dashboard.linked import register_linked_x
from gradlens.dashboard.xaxis import align, x_extent
from gradlens.report.sampling import every_of
from gradlens.store import Run

__all__ = ["CHARTS", "curves", "layout", "register"]

CHARTS = ("collapse-graph", "softmax-graph")


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
    facts = []
    if data.has("collapse"):
        counts = data.table("collapse", where={"metric": tuple(COUNTS)})
        for metric, part in counts.groupby("metric", sort=False) if not counts.empty else []:
            facts.append(html.Span(f"{metric} {part['value'].iloc[-1]:g}"))
    state = read_state(search)
    state.setdefault("logy", "1")
    body += [
        dcc.Store(id="coll-xrange"),
        dcc.Location(id="coll-url", refresh=False),  # the view, written to the query
        dcc.Store(id="coll-xsync"),
        html.Div(facts, className="facts"),
        controls(log_y=True, smoothing=False, state=state),
        graph("collapse-graph"),
        graph("softmax-graph"),
    ]
    return html.Div(body)


def register(app: Dash, ctx: AppContext) -> None:
    register_linked_x(app, "coll", CHARTS)

    @app.callback(
        Output("coll-url", "search"),
        Input("xaxis", "value"),
        Input("logy", "value"),
        prevent_initial_call=True,
    )
    def _url(xaxis: Any, logy: Any) -> str:
        return axes_search(xaxis, logy)

    @app.callback(
        Output("collapse-graph", "figure"),
        Output("softmax-graph", "figure"),
        Input("run-name", "data"),
        Input("xaxis", "value"),
        Input("logy", "value"),
        Input("tick", "data"),
        State("coll-xrange", "data"),
    )
    def _curves(name: str, xaxis: str, logy: list[str], _: Any, xrange: Any) -> Any:
        return curves(ctx, name, 0.0, xaxis, logy, xrange)


@guarded(2)
def curves(
    ctx: AppContext,
    name: str,
    smoothing: float,
    xaxis: str,
    logy: Sequence[str] | None,
    xrange: Sequence[Any] | None = None,
) -> tuple[go.Figure, go.Figure]:
    """Neural-collapse metrics and softmax-collapse signals (``smoothing`` is not applied)."""
    data = ctx.data(name)
    axes = axes_from(0.0, xaxis, logy, data.run.start_time)  # sparse probes: no smoothing
    nc = (
        collapse_figure(data.with_time(data.table("collapse")), axes)
        if data.has("collapse")
        else empty_figure("no neural-collapse data in this run")
    )
    soft = (
        softmax_figure(
            data.with_time(data.table("softmax")),
            axes,
            every_of(data.sampling(), "softmax", "saturated_fraction"),
        )
        if data.has("softmax")
        else empty_figure("no softmax data in this run")
    )
    extent = x_extent(data, axes)
    for fig in (nc, soft):
        align(fig, extent, xrange)
    return nc, soft
