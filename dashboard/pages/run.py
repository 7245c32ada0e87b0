"""The run page: loss, gradient norm and learning rate; the layer heatmap; the findings.

Callback bodies are plain functions of (context, inputs), so they are tested without a browser.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
from dash import Dash, Input, Output, dcc, html, no_update

from gradlens.dashboard.components import axes_from, controls, findings_table, graph, message, nav
from gradlens.dashboard.context import AppContext
from gradlens.dashboard.figures import (
    curve_with_events,
    empty_figure,
    heatmap_figure,
    layer_figure,
    lines_figure,
)
from gradlens.errors import GradlensError
from gradlens.store import Run

__all__ = [
    "HEATMAP_BUCKETS",
    "clicked_layer",
    "curves",
    "findings",
    "heatmap",
    "layer_curves",
    "layout",
    "register",
    "x_range",
]

HEATMAP_BUCKETS = 500
HEATMAP_METRICS = ("grad_norm", "update_ratio", "param_norm", "update_norm", "nonfinite")


def layout(ctx: AppContext, run: Run) -> html.Div:
    """The page for ``run`` (already validated by the catalog)."""
    name = run.path.name
    data = ctx.data(name)
    metrics = data.metrics("layers") if data.has("layers") else []
    heat = [m for m in HEATMAP_METRICS if m in metrics] + [
        m for m in metrics if m not in HEATMAP_METRICS
    ]
    layers = data.layers() if data.has("layers") else []
    meta = run.meta
    header = html.Div(
        [
            html.H2(name),
            html.Div(
                [
                    html.Span(run.status, id="run-status", className=f"status {run.status}"),
                    html.Span(f"{run.steps:,} steps", id="run-steps"),
                    html.Span(f"device {meta.get('device', '?')}"),
                    html.Code(str(meta.get("command", ""))),
                ],
                className="facts",
            ),
        ]
    )
    layer_section: list[Any] = [html.H3("Layers")]
    if layers:
        layer_section += [
            dcc.Dropdown(id="heatmap-metric", options=heat, value=heat[0], clearable=False),
            graph("heatmap-graph"),
            dcc.Dropdown(
                id="layer-select",
                options=layers,
                value=None,
                placeholder="click a heatmap row, or pick a layer",
            ),
            graph("layer-graph"),
        ]
    else:
        layer_section.append(message("no per-layer data in this run"))
    return html.Div(
        [
            nav(name, "run"),
            dcc.Store(id="run-name", data=name),
            header,
            controls(),
            html.Div([graph("loss-graph"), graph("gradnorm-graph"), graph("lr-graph")]),
            *layer_section,
            html.H3("Findings"),
            html.Div(id="findings"),
            html.Button(
                "Build the report",
                id="findings-build",
                n_clicks=0,
                style={} if not ctx.findings.small(run) else {"display": "none"},
            ),
        ]
    )


def register(app: Dash, ctx: AppContext) -> None:
    @app.callback(
        Output("loss-graph", "figure"),
        Output("gradnorm-graph", "figure"),
        Output("lr-graph", "figure"),
        Input("run-name", "data"),
        Input("smoothing", "value"),
        Input("xaxis", "value"),
        Input("logy", "value"),
        Input("refresh", "n_intervals"),
    )
    def _curves(name: str, smoothing: float, xaxis: str, logy: list[str], _: Any) -> Any:
        return curves(ctx, name, smoothing, xaxis, logy)

    @app.callback(
        Output("heatmap-graph", "figure"),
        Input("run-name", "data"),
        Input("heatmap-metric", "value"),
        Input("heatmap-graph", "relayoutData"),
        Input("refresh", "n_intervals"),
    )
    def _heatmap(name: str, metric: str, relayout: Mapping[str, Any] | None, _: Any) -> Any:
        return heatmap(ctx, name, metric, relayout)

    @app.callback(
        Output("layer-select", "value"),
        Input("heatmap-graph", "clickData"),
        Input("run-name", "data"),
        prevent_initial_call=True,
    )
    def _click(click: Mapping[str, Any] | None, name: str) -> Any:
        return clicked_layer(ctx, name, click)

    @app.callback(
        Output("layer-graph", "figure"),
        Input("run-name", "data"),
        Input("layer-select", "value"),
        Input("smoothing", "value"),
        Input("xaxis", "value"),
        Input("logy", "value"),
        Input("refresh", "n_intervals"),
    )
    def _layer(
        name: str, layer: str | None, smoothing: float, xaxis: str, logy: list[str], _: Any
    ) -> Any:
        return layer_curves(ctx, name, layer, smoothing, xaxis, logy)

    @app.callback(
        Output("findings", "children"),
        Input("run-name", "data"),
        Input("findings-build", "n_clicks"),
        Input("refresh", "n_intervals"),
    )
    def _findings(name: str, clicks: int | None, _: Any) -> Any:
        return findings(ctx, name, build=bool(clicks))

    @app.callback(
        Output("refresh", "disabled", allow_duplicate=True),
        Input("findings-build", "n_clicks"),
        prevent_initial_call=True,
    )
    def _poll_report(clicks: int | None) -> Any:
        # poll until the report is in (the timer then stops itself); a page load is no click
        return False if clicks else no_update


def curves(
    ctx: AppContext, name: str, smoothing: float, xaxis: str, logy: Sequence[str] | None
) -> tuple[go.Figure, go.Figure, go.Figure]:
    """Loss (spike and non-finite markers), global gradient norm, learning rate."""
    try:
        data = ctx.data(name)
    except GradlensError as exc:
        blank = empty_figure(str(exc))
        return blank, blank, blank
    axes = axes_from(smoothing, xaxis, logy, data.run.start_time)
    events = data.events()
    loss = curve_with_events(
        data.scalar("loss"), events, "loss", ["loss_spike"], ["nonfinite_loss"], axes
    )
    grad = curve_with_events(
        data.scalar("grad_norm"),
        events,
        "gradient norm (global L2)",
        ["grad_spike"],
        ["nonfinite_grad"],
        axes,
    )
    flat = axes_from(0.0, xaxis, logy, data.run.start_time)  # a schedule is not smoothed
    lr = lines_figure(data.groups("lr"), "learning rate", flat)
    return loss, grad, lr


def heatmap(
    ctx: AppContext, name: str, metric: str | None, relayout: Mapping[str, Any] | None
) -> go.Figure:
    """Layers × step buckets of ``metric``; re-bucketed to the zoomed step range."""
    try:
        data = ctx.data(name)
    except GradlensError as exc:
        return empty_figure(str(exc))
    if not metric or not data.has("layers"):
        return empty_figure("no per-layer data in this run")
    lo, hi = x_range(relayout)
    cells = data.layer_matrix(metric).window(lo, hi).heatmap(HEATMAP_BUCKETS)
    others = [m for m in HEATMAP_METRICS if m != metric and m in data.metrics("layers")]
    data.prefetch_layer_matrices(others[:3])  # the metrics a user switches to next
    return heatmap_figure(cells, metric)


def clicked_layer(ctx: AppContext, name: str, click: Mapping[str, Any] | None) -> str | None:
    """The layer of a clicked heatmap cell (only names the run really has)."""
    points = (click or {}).get("points") or []
    if not points:
        return None
    layer = points[0].get("y")
    try:
        return layer if layer in ctx.data(name).layers() else None
    except GradlensError:
        return None


def layer_curves(
    ctx: AppContext,
    name: str,
    layer: str | None,
    smoothing: float,
    xaxis: str,
    logy: Sequence[str] | None,
) -> go.Figure:
    """One layer's gradient norm, update/parameter ratio and parameter norm."""
    if not layer:
        return empty_figure("click a heatmap row (or pick a layer) to see its curves")
    try:
        data = ctx.data(name)
    except GradlensError as exc:
        return empty_figure(str(exc))
    if layer not in data.layers():
        return empty_figure(f"no layer {layer!r} in this run")
    axes = axes_from(smoothing, xaxis, logy, data.run.start_time)
    return layer_figure(data.layer_curves(layer), layer, data.events(), axes)


def findings(ctx: AppContext, name: str, build: bool = False) -> Any:
    """The findings table of the run's report (built in the background).

    The report reads whole tables into memory, so on a run above the service's row limit it
    is built only when asked (``build``, the page's button).
    """
    try:
        run = ctx.run(name)
    except GradlensError as exc:
        return message(str(exc), "error")
    state = ctx.findings.state(run, start=build, wait=0.25)
    if state.report is not None:
        table = findings_table(state.report)
        return [message("updating…"), table] if state.pending else table
    if state.error:
        return message(f"the report failed: {state.error}", "error")
    if state.pending:
        return message("computing the report… (this page refreshes by itself)")
    return message(
        f"not built automatically: this run has more than {ctx.findings.auto_rows:,} rows and "
        "the report reads them all into memory (gradlens report does the same); "
        "use the button to build it here",
        "warning",
    )


def x_range(relayout: Mapping[str, Any] | None) -> tuple[float | None, float | None]:
    """The x range a plotly relayout event zoomed to; (None, None) for the full range."""
    if not relayout or relayout.get("xaxis.autorange"):
        return None, None
    lo, hi = relayout.get("xaxis.range[0]"), relayout.get("xaxis.range[1]")
    if lo is None and isinstance(relayout.get("xaxis.range"), list | tuple):
        lo, hi = relayout["xaxis.range"][:2]
    try:
        return float(lo), float(hi)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None, None
