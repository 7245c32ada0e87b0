"""The run page: header and findings, then loss, the evaluations and the script's logged metrics
(when the run has them), gradient norm, learning rate, the layer heatmap.

Every chart on the page shares one x range (zoom, pan and a hover crosshair are linked in the
browser, see ``linked.py``) and the same margins, so a step sits at the same pixel column in
every chart. A finding's steps zoom every chart to them and open its layer. The view (layer,
metric, colouring, smoothing, axes, zoom) is kept in the URL. Callback bodies are plain
functions of (context, inputs), so they are tested without a browser.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from dash import ALL, Dash, Input, Output, State, dcc, html, no_update
from dash import ctx as dash_ctx

from gradlens.dashboard.components import (
    axes_from,
    config_details,
    controls,
    csv_link,
    finding_rows,
    findings_table,
    graph,
    message,
    nav,
    read_state,
    state_search,
    status_badges,
    unreadable_text,
)
from gradlens.dashboard.context import AppContext
from gradlens.dashboard.data import LAYER_CURVES, RunData
from gradlens.dashboard.figures import (
    X_TITLES,
    Axes,
    curve_with_events,
    empty_figure,
    escape,
    heatmap_figure,
    layer_figure,
    lines_figure,
    x_values,
)
from gradlens.dashboard.figures_eval import (
    eval_accuracy_figure,
    eval_loss_figure,
    user_figure,
)
from gradlens.dashboard.linked import register_linked_x
from gradlens.dashboard.xaxis import (
    align,
    finding_shades,
    shade_ranges,
    step_to_x,
    to_steps,
    x_extent,
)
from gradlens.report.sampling import every_of
from gradlens.store import Run

__all__ = [
    "CHARTS",
    "HEATMAP_BUCKETS",
    "clicked_layer",
    "curves",
    "default_colour",
    "evaluation",
    "finding_target",
    "findings",
    "header",
    "heatmap",
    "layer_curves",
    "layout",
    "register",
    "x_range",
]

HEATMAP_BUCKETS = 500
HEATMAP_METRICS = ("grad_norm", "update_ratio", "param_norm", "update_norm", "nonfinite")
EVAL_CHARTS = ("eval-graph", "evalacc-graph", "user-graph")
CHARTS = ("loss-graph", *EVAL_CHARTS, "gradnorm-graph", "lr-graph", "heatmap-graph", "layer-graph")
CURVES = ("loss-graph", *EVAL_CHARTS, "gradnorm-graph", "lr-graph", "layer-graph")
_HIDDEN = {"display": "none"}


def layout(ctx: AppContext, run: Run, search: str | None = None) -> html.Div:
    """The page for ``run`` (already validated by the catalog); view state from ``search``."""
    name = run.path.name
    data = ctx.data(name)
    state = read_state(search)
    metrics = data.metrics("layers") if data.has("layers") else []
    heat = [m for m in HEATMAP_METRICS if m in metrics] + [
        m for m in metrics if m not in HEATMAP_METRICS
    ]
    layers = data.layers() if data.has("layers") else []
    metric = state.get("metric") if state.get("metric") in heat else (heat[0] if heat else None)
    colour = state.get("colour")
    if colour not in ("value", "relative"):
        colour = default_colour(data)
    layer = state.get("layer") if state.get("layer") in layers else None
    xrange = _range_from(state.get("range"))
    hidden = {} if layers else {"display": "none"}
    layer_section: list[Any] = [html.H3("Layers")]
    if not layers:
        layer_section.append(message("no per-layer data in this run"))
    layer_section.append(
        html.Div(
            [
                html.Div(
                    [
                        dcc.Dropdown(
                            id="heatmap-metric", options=heat, value=metric, clearable=False
                        ),
                        dcc.RadioItems(
                            id="heatmap-colour",
                            options=[
                                {"label": "value (log)", "value": "value"},
                                {"label": "× layer's own baseline", "value": "relative"},
                            ],
                            value=colour,
                            inline=True,
                        ),
                    ],
                    className="pickers",
                ),
                graph("heatmap-graph"),
                dcc.Dropdown(
                    id="layer-select",
                    options=[{"label": n, "value": n} for n in layers],
                    value=layer,
                    placeholder="click a heatmap row or a finding's layer, or pick a layer",
                ),
                graph("layer-graph"),
                html.Div(id="layer-csv", className="csv-links"),
            ],
            style=hidden,
        )
    )
    return html.Div(
        [
            nav(name, "run"),
            dcc.Store(id="run-name", data=name),
            dcc.Location(id="run-url", refresh=False),  # the view, written to the query
            dcc.Store(id="run-xrange", data=xrange),
            dcc.Store(id="run-xsync"),
            dcc.Store(id="findings-data", data=[]),
            html.Div(header(ctx, name), id="run-header"),
            html.Details(
                [html.Summary("Findings", id="findings-summary"), html.Div(id="findings")],
                open=True,
                className="findings",
            ),
            html.Button(
                "Build the report",
                id="findings-build",
                n_clicks=0,
                style={} if not ctx.findings.small(run) else {"display": "none"},
            ),
            controls(
                state=state,
                extra=[
                    dcc.Checklist(
                        id="shade-findings",
                        options=[{"label": "shade findings", "value": "on"}],
                        value=[] if state.get("shade") == "0" else ["on"],
                        inline=True,
                    )
                ],
            ),
            graph("loss-graph"),
            *(
                html.Div(graph(chart), id=f"{chart}-box", style=style)
                for chart, style in zip(EVAL_CHARTS, eval_styles(data), strict=True)
            ),
            graph("gradnorm-graph"),
            graph("lr-graph"),
            html.Div(
                [
                    html.Span("download as CSV:"),
                    csv_link(name, "scalars", "loss", index=0),
                    csv_link(name, "scalars", "grad_norm", index=0),
                    csv_link(name, "scalars", "lr"),
                ],
                className="csv-links",
            ),
            *layer_section,
        ]
    )


def eval_styles(data: RunData) -> tuple[dict[str, str], ...]:
    """Shown (``{}``) or hidden, per chart of ``EVAL_CHARTS``: a run without evaluations or
    logged metrics has no empty charts for them."""
    try:
        metrics = set(data.metrics("scalars")) if data.has("scalars") else set()
        logged = data.has("user")
    except Exception:
        return (_HIDDEN,) * len(EVAL_CHARTS)
    return tuple(
        {} if shown else _HIDDEN
        for shown in ("eval_loss" in metrics, "eval_accuracy" in metrics, logged)
    )


def header(ctx: AppContext, name: str) -> Any:
    """Name, status and health, steps, device, command and config (re-read every refresh)."""
    try:
        run = ctx.run(name)
    except Exception as exc:
        return message(unreadable_text(exc), "error")
    meta = run.meta
    state = ctx.findings.state(run, start=False)
    return [
        html.H2(name),
        html.Div(
            [
                *status_badges(run, state),
                html.Span(f"{run.steps:,} steps", id="run-steps"),
                html.Span(f"device {meta.get('device', '?')}"),
                html.Code(str(meta.get("command", ""))),
            ],
            className="facts",
        ),
        config_details(meta, _learning_rates(ctx, name)),
    ]


def _learning_rates(ctx: AppContext, name: str) -> list[tuple[str, str]]:
    """Each param group's learning rate at the first and last step (from the ``lr`` scalar)."""
    try:
        data = ctx.data(name)
        lr = data.groups("lr") if data.has("scalars") else pd.DataFrame()
    except Exception:
        return []
    rows = []
    for group, part in lr.groupby("series", sort=False) if not lr.empty else []:
        first, last = part["value"].iloc[0], part["value"].iloc[-1]
        shown = f"{first:.4g}" if first == last else f"{first:.4g} → {last:.4g}"
        rows.append((f"lr ({group})", shown))
    return rows


def default_colour(data: RunData) -> str:
    """``relative`` when the run has spike events (then the spiking layer is the bright row)."""
    try:
        events = data.events()
    except Exception:
        return "value"
    if events.empty or "kind" not in events:
        return "value"
    return "relative" if events["kind"].astype(str).str.endswith("_spike").any() else "value"


def register(app: Dash, ctx: AppContext) -> None:
    register_linked_x(app, "run", CHARTS, hover=CURVES)

    @app.callback(
        Output("loss-graph", "figure"),
        Output("gradnorm-graph", "figure"),
        Output("lr-graph", "figure"),
        Input("run-name", "data"),
        Input("smoothing", "value"),
        Input("xaxis", "value"),
        Input("logy", "value"),
        Input("shade-findings", "value"),
        Input("tick", "data"),
        State("run-xrange", "data"),
    )
    def _curves(
        name: str, smoothing: float, xaxis: str, logy: list[str], shade: Any, _: Any, xr: Any
    ) -> Any:
        return curves(ctx, name, smoothing, xaxis, logy, xr, shade=bool(shade))

    @app.callback(
        *(Output(chart, "figure") for chart in EVAL_CHARTS),
        *(Output(f"{chart}-box", "style") for chart in EVAL_CHARTS),
        Input("run-name", "data"),
        Input("smoothing", "value"),
        Input("xaxis", "value"),
        Input("logy", "value"),
        Input("shade-findings", "value"),
        Input("tick", "data"),
        State("run-xrange", "data"),
    )
    def _evaluation(
        name: str, smoothing: float, xaxis: str, logy: list[str], shade: Any, _: Any, xr: Any
    ) -> Any:
        figures = evaluation(ctx, name, smoothing, xaxis, logy, xr, shade=bool(shade))
        try:
            styles = eval_styles(ctx.data(name))
        except Exception:
            styles = (_HIDDEN,) * len(EVAL_CHARTS)
        return (*figures, *styles)

    # a chart shown after the page was drawn (a live run's first evaluation) was laid out
    # hidden: resize it to the page's width, so its plot area lines up with the others
    app.clientside_callback(
        """function() {
  setTimeout(() => {
    for (const id of IDS) {
      const gd = document.querySelector('#' + id + ' .js-plotly-plot');
      if (gd && gd.offsetParent !== null && gd._fullLayout) Plotly.Plots.resize(gd);
    }
  }, 50);
  return window.dash_clientside.no_update;
}""".replace("IDS", json.dumps(list(EVAL_CHARTS))),
        Output("run-xsync", "data", allow_duplicate=True),
        *(Input(f"{chart}-box", "style") for chart in EVAL_CHARTS),
        prevent_initial_call=True,
    )

    @app.callback(
        Output("run-xrange", "data", allow_duplicate=True),
        Input("xaxis", "value"),
        prevent_initial_call=True,
    )
    def _reset_zoom(_: str) -> Any:
        return None  # a range in steps means nothing on a time axis

    @app.callback(
        Output("heatmap-graph", "figure"),
        Input("run-name", "data"),
        Input("heatmap-metric", "value"),
        Input("heatmap-colour", "value"),
        Input("xaxis", "value"),
        Input("run-xrange", "data"),
        Input("tick", "data"),
    )
    def _heatmap(name: str, metric: str, colour: str, xaxis: str, xr: Any, _: Any) -> Any:
        return heatmap(ctx, name, metric, xr, colour=colour, xaxis=xaxis)

    @app.callback(
        Output("layer-select", "value"),
        Output("run-xrange", "data", allow_duplicate=True),
        Input("heatmap-graph", "clickData"),
        Input({"type": "finding-steps", "index": ALL}, "n_clicks"),
        Input({"type": "finding-layer", "index": ALL}, "n_clicks"),
        State("run-name", "data"),
        State("findings-data", "data"),
        State("xaxis", "value"),
        prevent_initial_call=True,
    )
    def _pick(click: Any, steps: Any, layers: Any, name: str, rows: Any, xaxis: str) -> Any:
        trigger = dash_ctx.triggered_id
        if trigger == "heatmap-graph":
            return clicked_layer(ctx, name, click) or no_update, no_update
        if not isinstance(trigger, Mapping) or not dash_ctx.triggered[0].get("value"):
            return no_update, no_update
        layer, xr = finding_target(ctx, name, rows or [], int(trigger["index"]), xaxis)
        if trigger.get("type") == "finding-layer":
            return layer or no_update, no_update
        return layer or no_update, xr if xr is not None else no_update

    @app.callback(
        Output("layer-graph", "figure"),
        Output("layer-csv", "children"),
        Input("run-name", "data"),
        Input("layer-select", "value"),
        Input("smoothing", "value"),
        Input("xaxis", "value"),
        Input("logy", "value"),
        Input("tick", "data"),
        State("run-xrange", "data"),
    )
    def _layer(
        name: str,
        layer: str | None,
        smoothing: float,
        xaxis: str,
        logy: list[str],
        _: Any,
        xr: Any,
    ) -> Any:
        fig = layer_curves(ctx, name, layer, smoothing, xaxis, logy, xr)
        links = (
            [html.Span("download as CSV:")]
            + [csv_link(name, "layers", m, layer=layer) for m in LAYER_CURVES]
            if layer
            else []
        )
        return fig, links

    @app.callback(
        Output("findings", "children"),
        Output("findings-data", "data"),
        Output("run-header", "children"),
        Input("run-name", "data"),
        Input("findings-build", "n_clicks"),
        Input("tick", "data"),
    )
    def _findings(name: str, clicks: int | None, _: Any) -> Any:
        children, rows = findings(ctx, name, build=bool(clicks))
        return children, rows, header(ctx, name)

    @app.callback(
        Output("refresh", "disabled", allow_duplicate=True),
        Input("findings-build", "n_clicks"),
        prevent_initial_call=True,
    )
    def _poll_report(clicks: int | None) -> Any:
        # poll until the report is in (the timer then stops itself); a page load is no click
        return False if clicks else no_update

    @app.callback(
        Output("run-url", "search"),
        Input("layer-select", "value"),
        Input("heatmap-metric", "value"),
        Input("heatmap-colour", "value"),
        Input("smoothing", "value"),
        Input("xaxis", "value"),
        Input("logy", "value"),
        Input("shade-findings", "value"),
        Input("run-xrange", "data"),
        prevent_initial_call=True,
    )
    def _url(
        layer: Any,
        metric: Any,
        colour: Any,
        smoothing: Any,
        xaxis: Any,
        logy: Any,
        shade: Any,
        xr: Any,
    ) -> str:
        return view_search(layer, metric, colour, smoothing, xaxis, logy, shade, xr)


def view_search(
    layer: Any,
    metric: Any,
    colour: Any,
    smoothing: Any,
    xaxis: Any,
    logy: Any,
    shade: Any,
    xr: Any,
) -> str:
    """The run page's view as a URL query (read back by ``layout``)."""
    flags = logy or []
    return state_search(
        {
            "layer": layer,
            "metric": metric,
            "colour": colour,
            "smoothing": smoothing,
            "x": xaxis if xaxis != "step" else None,
            "logy": "1" if "log" in flags else None,
            "outliers": "1" if "outliers" in flags else None,
            "shade": None if shade else "0",
            "range": ",".join(str(v) for v in xr)
            if isinstance(xr, list) and len(xr) == 2
            else None,
        }
    )


def curves(
    ctx: AppContext,
    name: str,
    smoothing: float,
    xaxis: str,
    logy: Sequence[str] | None,
    xrange: Sequence[Any] | None = None,
    shade: bool = True,
) -> tuple[go.Figure, go.Figure, go.Figure]:
    """Loss (spike and non-finite markers), global gradient norm, learning rate.

    All three (and the heatmap) share the run's x extent, ``xrange`` when zoomed, and the
    page's margins; findings are shaded over their steps when ``shade``.
    """
    try:
        data = ctx.data(name)
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
        extent = x_extent(data, axes)
        shades = finding_shades(ctx.findings, data, axes) if shade else []
    except Exception as exc:
        blank = empty_figure(unreadable_text(exc))
        return blank, blank, blank
    for fig in (loss, grad, lr):
        align(fig, extent, xrange)
        shade_ranges(fig, shades)
    return loss, grad, lr


def evaluation(
    ctx: AppContext,
    name: str,
    smoothing: float,
    xaxis: str,
    logy: Sequence[str] | None,
    xrange: Sequence[Any] | None = None,
    shade: bool = True,
) -> tuple[go.Figure, go.Figure, go.Figure]:
    """Eval loss per loader (with the training loss at each evaluation), eval accuracy per
    loader, and the script's logged metrics; on the run's x extent like the curves above."""
    try:
        data = ctx.data(name)
        axes = axes_from(smoothing, xaxis, logy, data.run.start_time)
        loss = eval_loss_figure(data.evaluations("eval_loss"), data.train_loss_at_evals(), axes)
        accuracy = eval_accuracy_figure(data.evaluations("eval_accuracy"), axes)
        user = user_figure(data.user_metrics(), axes)
        extent = x_extent(data, axes)
        shades = finding_shades(ctx.findings, data, axes) if shade else []
    except Exception as exc:
        blank = empty_figure(unreadable_text(exc))
        return blank, blank, blank
    for fig in (loss, accuracy, user):
        align(fig, extent, xrange)
    shade_ranges(loss, shades)
    shade_ranges(accuracy, shades)
    return loss, accuracy, user


def heatmap(
    ctx: AppContext,
    name: str,
    metric: str | None,
    xrange: Sequence[Any] | Mapping[str, Any] | None,
    colour: str = "value",
    xaxis: str = "step",
) -> go.Figure:
    """Layers × step buckets of ``metric``, re-bucketed to the zoomed range ``xrange``.

    ``colour`` is ``value`` (log of the bucket's max) or ``relative`` (max over the layer's
    own EMA baseline). ``xrange`` is in the units of ``xaxis`` (or a plotly relayout event).
    """
    try:
        data = ctx.data(name)
        if not metric or not data.has("layers"):
            return empty_figure("no per-layer data in this run")
        axes = axes_from(0.0, xaxis, [], data.run.start_time)
        if isinstance(xrange, Mapping):
            xrange = list(x_range(xrange)) if x_range(xrange)[0] is not None else None
        lo, hi = to_steps(data, axes, xrange)
        matrix = data.layer_matrix(metric).window(lo, hi)
        cells = matrix.heatmap(HEATMAP_BUCKETS)
        last = matrix.last_steps(HEATMAP_BUCKETS)
        relative = None
        if colour == "relative":
            ratio = data.relative_matrix(metric).window(lo, hi)
            relative = ratio.heatmap(HEATMAP_BUCKETS)
        x = None
        if axes.xaxis != "step" and not cells.empty:
            centres = (np.asarray(cells.columns, dtype=np.float64) + last) / 2.0
            x = x_values(data.with_time(pd.DataFrame({"step": centres})), axes)
        every = every_of(data.sampling(), "layers", metric)
        fig = heatmap_figure(cells, metric, last, relative, x, _x_title(axes), every)
        extent = x_extent(data, axes)
    except Exception as exc:
        return empty_figure(unreadable_text(exc))
    if not cells.empty:
        align(fig, extent, xrange)
        layers = [escape(n) for n in cells.index]
        fig.layout.yaxis.update(
            automargin=False, tickvals=layers, ticktext=[_short(n) for n in cells.index]
        )
    with contextlib.suppress(Exception):  # a guess at the metrics a user switches to next
        others = [m for m in HEATMAP_METRICS if m != metric and m in data.metrics("layers")]
        data.prefetch_layer_matrices(others[:3])
    return fig


def clicked_layer(ctx: AppContext, name: str, click: Mapping[str, Any] | None) -> str | None:
    """The layer of a clicked heatmap cell (only names the run really has)."""
    points = (click or {}).get("points") or []
    if not points:
        return None
    shown = points[0].get("y")
    try:
        layers = ctx.data(name).layers()
    except Exception:
        return None
    by_label = {escape(n): n for n in layers}  # the heatmap shows names escaped
    return by_label.get(shown) if isinstance(shown, str) else None


def layer_curves(
    ctx: AppContext,
    name: str,
    layer: str | None,
    smoothing: float,
    xaxis: str,
    logy: Sequence[str] | None,
    xrange: Sequence[Any] | None = None,
) -> go.Figure:
    """One layer's gradient norm, update/parameter ratio and parameter norm."""
    if not layer:
        return empty_figure("click a heatmap row (or a finding's layer) to see its curves")
    try:
        data = ctx.data(name)
        if layer not in data.layers():
            return empty_figure(f"no layer {escape(layer)!r} in this run")
        axes = axes_from(smoothing, xaxis, logy, data.run.start_time)
        sampling = data.sampling().get("layers")
        fig = layer_figure(data.layer_curves(layer), layer, data.events(), axes, sampling)
        extent = x_extent(data, axes)
    except Exception as exc:
        return empty_figure(unreadable_text(exc))
    return align(fig, extent, xrange)


def findings(ctx: AppContext, name: str, build: bool = False) -> tuple[Any, list[dict]]:
    """The findings of the run's report (built in the background) and their targets.

    The report reads whole tables into memory, so on a run above the service's row limit it
    is built only when asked (``build``, the page's button).
    """
    try:
        run = ctx.run(name)
    except Exception as exc:
        return message(unreadable_text(exc), "error"), []
    state = ctx.findings.state(run, start=build, wait=0.25)
    if state.report is not None:
        table = findings_table(state.report, links=True)
        rows = finding_rows(state.report)
        return ([message("updating…"), table] if state.pending else table), rows
    if state.error:
        return message(f"the report failed: {state.error}", "error"), []
    if state.pending:
        return message("computing the report… (this page refreshes by itself)"), []
    return (
        message(
            f"not built automatically: this run has more than {ctx.findings.auto_rows:,} rows "
            "and the report reads them all into memory (gradlens report does the same); "
            "use the button to build it here",
            "warning",
        ),
        [],
    )


def finding_target(
    ctx: AppContext, name: str, rows: Sequence[Mapping[str, Any]], index: int, xaxis: str
) -> tuple[str | None, list[Any] | None]:
    """A clicked finding's layer (if the run has it) and x range (its steps, padded)."""
    if not 0 <= index < len(rows):
        return None, None
    row = rows[index]
    try:
        data = ctx.data(name)
        layers = data.layers() if data.has("layers") else []
    except Exception:
        return None, None
    layer = row.get("layer") if row.get("layer") in layers else None
    start, end = row.get("start"), row.get("end")
    if not isinstance(start, int):
        return layer, None
    end = end if isinstance(end, int) else start
    pad = max(5, (end - start) // 4)
    axes = axes_from(0.0, xaxis, [], data.run.start_time)
    lo, hi = step_to_x(data, axes, [start - pad, end + pad])
    return layer, [lo, hi]


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


def _x_title(axes: Axes) -> str:
    return X_TITLES.get(axes.xaxis, "step")


def _short(name: str, width: int = 30) -> str:
    shown = name if len(name) <= width else "…" + name[-(width - 1) :]
    return escape(shown)


def _range_from(text: str | None) -> list[Any] | None:
    """A zoom from the URL: two numbers (steps or seconds) or two local times (wall axis)."""
    parts = (text or "").split(",")
    if len(parts) != 2 or not all(parts):
        return None
    try:
        lo, hi = float(parts[0]), float(parts[1])
    except ValueError:
        try:
            stamps = [pd.Timestamp(p) for p in parts]
        except ValueError:
            return None
        return parts if stamps[0] < stamps[1] else None
    return [lo, hi] if np.isfinite(lo) and np.isfinite(hi) and lo < hi else None
