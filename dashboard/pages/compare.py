"""The compare page: chosen runs overlaid on any metric."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs

import pandas as pd
import plotly.graph_objects as go
from dash import Dash, Input, Output, State, dcc, html

from gradlens.dashboard.components import axes_from, controls, graph, message, nav, unreadable_text
from gradlens.dashboard.context import AppContext
from gradlens.dashboard.data import RunData
from gradlens.dashboard.figures import compare_figure, empty_figure, escape
from gradlens.errors import GradlensError

__all__ = ["METRIC_TABLES", "figure", "layout", "metric_options", "register", "selected_runs"]

# tables whose metrics can be compared, and which rows make a run's single series
METRIC_TABLES: dict[str, dict[str, Any]] = {
    "scalars": {"index": 0},
    "layers": {},  # plus the chosen layer
    "hessian": {"layer": "", "index": 0},
    "collapse": {},
    "softmax": {"layer": ""},
}


def selected_runs(ctx: AppContext, search: str | None) -> list[str]:
    """Run names from ``?runs=a,b`` that the catalog knows (others are dropped)."""
    query = parse_qs((search or "").lstrip("?"))
    names = [n for part in query.get("runs", []) for n in part.split(",") if n]
    known = set(ctx.catalog.names())
    return [n for n in dict.fromkeys(names) if n in known]


def layout(ctx: AppContext, search: str | None) -> html.Div:
    """The comparison of the runs named in the query (pick more in the page)."""
    names = ctx.catalog.names()
    chosen = selected_runs(ctx, search)
    if not names:
        return html.Div([nav(None, "compare"), message("no runs to compare", "warning")])
    return html.Div(
        [
            nav(None, "compare"),
            html.H2("Compare runs"),
            html.Div(
                [
                    html.Label("runs"),
                    dcc.Dropdown(id="compare-runs", options=names, value=chosen, multi=True),
                    html.Label("metric"),
                    dcc.Dropdown(id="compare-metric", value="scalars|loss", clearable=False),
                    html.Label("layer"),
                    dcc.Dropdown(id="compare-layer", placeholder="(per-layer metrics)"),
                ],
                className="pickers",
            ),
            controls(),
            graph("compare-graph"),
        ]
    )


def register(app: Dash, ctx: AppContext) -> None:
    @app.callback(
        Output("compare-metric", "options"),
        Output("compare-layer", "options"),
        Output("compare-layer", "value"),
        Input("compare-runs", "value"),
        State("compare-layer", "value"),
    )
    def _options(names: list[str] | None, layer: str | None) -> Any:
        metrics, layers = metric_options(ctx, names or [])
        return metrics, layers, layer if layer in layers else (layers[0] if layers else None)

    @app.callback(
        Output("compare-graph", "figure"),
        Input("compare-runs", "value"),
        Input("compare-metric", "value"),
        Input("compare-layer", "value"),
        Input("smoothing", "value"),
        Input("xaxis", "value"),
        Input("logy", "value"),
        Input("refresh", "n_intervals"),
    )
    def _figure(
        names: list[str] | None,
        metric: str | None,
        layer: str | None,
        smoothing: float,
        xaxis: str,
        logy: list[str],
        _: Any,
    ) -> Any:
        return figure(ctx, names or [], metric, layer, smoothing, xaxis, logy)


def metric_options(ctx: AppContext, names: Sequence[str]) -> tuple[list[dict[str, str]], list[str]]:
    """Metrics of the chosen runs as ``table|metric`` options, and their layer names."""
    options: dict[str, None] = {}
    layers: dict[str, None] = {}
    for name in names:
        try:
            data = ctx.data(name)
        except GradlensError:
            continue
        for table in METRIC_TABLES:
            if data.has(table):
                options.update((f"{table}|{m}", None) for m in data.metrics(table))
        if data.has("layers"):
            layers.update((layer, None) for layer in data.layers())
    labels = [
        {
            "label": key.split("|")[1]
            + ("" if key.startswith("scalars") else f" ({key[: key.index('|')]})"),
            "value": key,
        }
        for key in options
    ]
    return labels, list(layers)


def figure(
    ctx: AppContext,
    names: Sequence[str],
    metric: str | None,
    layer: str | None,
    smoothing: float,
    xaxis: str,
    logy: Sequence[str] | None,
) -> go.Figure:
    """``metric`` (``table|name``) of every chosen run on one set of axes."""
    if not names:
        return empty_figure("choose runs to compare")
    table, _, name = (metric or "scalars|loss").partition("|")
    if table not in METRIC_TABLES:
        return empty_figure(f"cannot compare {metric!r}")
    where = dict(METRIC_TABLES[table])
    if table == "layers":
        if not layer:
            return empty_figure("choose a layer")
        where["layer"] = layer
    parts = []
    failed = []
    for run_name in names:
        try:
            data = ctx.data(run_name)
            if data.has(table) and name in data.metrics(table):
                parts.append(_series(data, table, name, where).assign(series=run_name))
        except Exception as exc:
            failed.append(f"{run_name}: {unreadable_text(exc)}")
    title = name if table != "layers" else f"{name} of {layer}"
    if not parts:
        return empty_figure(f"no {title} in the chosen runs")
    axes = axes_from(smoothing, xaxis, logy, None)
    fig = compare_figure(pd.concat(parts, ignore_index=True), title, axes)
    for i, text in enumerate(failed):
        fig.add_annotation(
            text=escape(text), xref="paper", yref="paper", x=0, y=1 - 0.08 * i, showarrow=False
        )
    return fig


def _series(data: RunData, table: str, metric: str, where: dict[str, Any]) -> pd.DataFrame:
    frame = data.series(table, metric, layer=where.get("layer"), index=where.get("index"))
    return frame.assign(start_time=data.run.start_time or 0.0)
