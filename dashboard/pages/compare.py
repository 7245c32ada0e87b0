"""The compare page: the chosen runs overlaid on a grid of charts, one per metric.

As in TensorBoard and W&B: a runs sidebar (each run keeps one colour on every chart; a regex
filters the list), metrics grouped in sections (training, evaluation — every loader of every
run, the first solid and the others dashed —, the scripts' logged metrics, layers, curvature,
collapse, softmax; internals hidden until asked for) and filtered by a regex, a hover that
lists every run's value at that step, and the diff of the runs' configs. Unknown names in
``?runs=`` are reported. The view (runs, sections, filter, smoothing, axes, layer) lives in
the URL.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

import pandas as pd
import plotly.graph_objects as go
from dash import Dash, Input, Output, dcc, html

from gradlens.dashboard.components import (
    axes_from,
    controls,
    flatten,
    health,
    message,
    nav,
    read_state,
    state_search,
    table,
    unreadable_text,
)
from gradlens.dashboard.context import AppContext
from gradlens.dashboard.data import RunData
from gradlens.dashboard.figures import PALETTE, compare_figure, empty_figure, escape
from gradlens.report.sampling import every_of

__all__ = [
    "INTERNALS",
    "METRIC_TABLES",
    "SECTIONS",
    "config_diff",
    "figure",
    "grid",
    "grid_chart",
    "grid_style",
    "layout",
    "metric_options",
    "register",
    "run_colours",
    "selected_runs",
    "unknown_runs",
]

# tables whose metrics can be compared, and which rows make a run's single series
METRIC_TABLES: dict[str, dict[str, Any]] = {
    "scalars": {"index": 0},
    "layers": {},  # plus the chosen layer
    "hessian": {"layer": "", "index": 0},
    "collapse": {},
    "softmax": {"layer": ""},
    "user": {},  # the script's own scalars (gradlens.log)
}
# section -> table; "training" and "internals" split the scalars
SECTIONS = {
    "training": "scalars",
    "evaluation": "scalars",
    "logged": "user",
    "layers": "layers",
    "curvature": "hessian",
    "collapse": "collapse",
    "softmax": "softmax",
    "internals": "scalars",
}
DEFAULT_SECTIONS = ("training", "evaluation", "logged", "layers", "curvature")
EVAL = ("eval_loss", "eval_accuracy")  # one line per run and loader (index)
TRAINING = ("loss", "grad_norm", "lr", "accuracy", "val_loss")
INTERNALS = (
    "time",
    "step_time",
    "samples_per_s",
    "skipped",
    "nonfinite",
    "clip_coef",
    "eval_samples",
)
COUNTS = ("num_classes", "num_samples")
# a probe's costs and convergence checks (in metric names): internals, not curvature
PROBE_INTERNALS = ("probe_seconds", "hvp", "residual", "fd_check", "_stderr", "_reached")
MAX_CHARTS = 24


def _query_runs(search: str | None) -> list[str]:
    query = parse_qs((search or "").lstrip("?"))
    names = [n for part in query.get("runs", []) for n in part.split(",") if n]
    return list(dict.fromkeys(names))


def selected_runs(ctx: AppContext, search: str | None) -> list[str]:
    """Run names from ``?runs=a,b`` that the catalog knows (see ``unknown_runs``)."""
    known = set(ctx.catalog.names())
    return [n for n in _query_runs(search) if n in known]


def unknown_runs(ctx: AppContext, search: str | None) -> list[str]:
    """Names in ``?runs=`` that are not runs here (reported on the page, not dropped silently)."""
    known = set(ctx.catalog.names())
    return [n for n in _query_runs(search) if n not in known]


def run_colours(names: Sequence[str]) -> dict[str, str]:
    """One colour per run, by its place among all runs: the same on every chart and visit."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def layout(ctx: AppContext, search: str | None) -> html.Div:
    """The comparison of the runs named in the query (pick more in the sidebar)."""
    names = ctx.catalog.names()
    if not names:
        return html.Div([nav(None, "compare"), message("no runs to compare", "warning")])
    state = read_state(search)
    chosen = selected_runs(ctx, search)
    unknown = unknown_runs(ctx, search)
    sections = [s for s in (state.get("sections") or "").split(",") if s in SECTIONS]
    colours = run_colours(names)
    _, layers = metric_options(ctx, chosen)  # set here: the grid then waits for no callback
    layer = state.get("layer") if state.get("layer") in layers else (layers[0] if layers else None)
    notices = []
    if unknown:
        notices.append(
            message("not runs here, left out: " + ", ".join(repr(n) for n in unknown), "warning")
        )
    sidebar = html.Div(
        [
            html.H3("Runs"),
            dcc.Input(id="compare-run-filter", type="text", placeholder="filter runs (regex)"),
            dcc.Checklist(
                id="compare-runs",
                options=_run_options(names, colours, _health_marks(ctx, names)),
                value=chosen,
                labelStyle={"display": "block"},
            ),
            html.H3("Metrics"),
            dcc.Input(
                id="compare-metric-filter",
                type="text",
                placeholder="filter metrics (regex)",
                value=state.get("filter", ""),
            ),
            dcc.Checklist(
                id="compare-sections",
                options=list(SECTIONS),
                value=sections or list(DEFAULT_SECTIONS),
                labelStyle={"display": "block"},
            ),
            html.Label("layer (layers section)"),
            dcc.Dropdown(id="compare-layer", options=layers, value=layer, clearable=False),
        ],
        className="sidebar",
    )
    main = html.Div(
        [
            controls(state=state),
            html.Div(id="compare-notes"),
            dcc.Loading(html.Div(id="compare-grid", className="grid"), delay_show=400),
            html.Details(
                [html.Summary("config diff"), html.Div(id="compare-config")],
                open=True,
                className="config",
            ),
        ]
    )
    return html.Div(
        [
            nav(None, "compare"),
            dcc.Location(id="compare-url", refresh=False),
            html.H2("Compare runs"),
            *notices,
            html.Div([sidebar, main], className="sidebar-layout"),
        ]
    )


def register(app: Dash, ctx: AppContext) -> None:
    @app.callback(
        Output("compare-runs", "options"),
        Input("compare-run-filter", "value"),
        Input("compare-runs", "value"),
    )
    def _run_list(pattern: str | None, chosen: list[str] | None) -> Any:
        names = ctx.catalog.names()
        keep = _regex(pattern)
        shown = [n for n in names if keep is None or keep.search(n) or n in (chosen or [])]
        return _run_options(shown, run_colours(names), _health_marks(ctx, shown))

    @app.callback(
        Output("compare-layer", "options"),
        Output("compare-layer", "value"),
        Input("compare-runs", "value"),
        Input("compare-layer", "value"),
        prevent_initial_call=True,  # the layout sets both
    )
    def _layers(names: list[str] | None, layer: str | None) -> Any:
        _, layers = metric_options(ctx, names or [])
        return layers, layer if layer in layers else (layers[0] if layers else None)

    @app.callback(
        Output("compare-grid", "children"),
        Output("compare-notes", "children"),
        Output("compare-config", "children"),
        Input("compare-runs", "value"),
        Input("compare-sections", "value"),
        Input("compare-metric-filter", "value"),
        Input("compare-layer", "value"),
        Input("smoothing", "value"),
        Input("xaxis", "value"),
        Input("logy", "value"),
        Input("tick", "data"),
    )
    def _grid(
        names: list[str] | None,
        sections: list[str] | None,
        pattern: str | None,
        layer: str | None,
        smoothing: float,
        xaxis: str,
        logy: list[str],
        _: Any,
    ) -> Any:
        charts, notes = grid(
            ctx, names or [], sections or [], pattern, layer, smoothing, xaxis, logy
        )
        return charts, notes, config_diff(ctx, names or [])

    @app.callback(
        Output("compare-url", "search"),
        Input("compare-runs", "value"),
        Input("compare-sections", "value"),
        Input("compare-metric-filter", "value"),
        Input("compare-layer", "value"),
        Input("smoothing", "value"),
        Input("xaxis", "value"),
        Input("logy", "value"),
        prevent_initial_call=True,
    )
    def _url(
        names: Any, sections: Any, pattern: Any, layer: Any, smoothing: Any, xaxis: Any, logy: Any
    ) -> str:
        flags = logy or []
        return state_search(
            {
                "runs": ",".join(names or []),
                "sections": ",".join(sections or []),
                "filter": pattern,
                "layer": layer,
                "smoothing": smoothing,
                "x": xaxis if xaxis != "step" else None,
                "logy": "1" if "log" in flags else None,
                "outliers": "1" if "outliers" in flags else None,
            }
        )


def metric_options(ctx: AppContext, names: Sequence[str]) -> tuple[list[dict[str, str]], list[str]]:
    """Metrics of the chosen runs as ``table|metric`` options, and their layer names."""
    options: dict[str, None] = {}
    layers: dict[str, None] = {}
    for name in names:
        try:
            data = ctx.data(name)
            for table_name in METRIC_TABLES:
                if data.has(table_name):
                    options.update((f"{table_name}|{m}", None) for m in data.metrics(table_name))
            if data.has("layers"):
                layers.update((layer, None) for layer in data.layers())
        except Exception:  # an unreadable run adds nothing; grid() reports it
            continue
    labels = [
        {
            "label": key.split("|")[1]
            + ("" if key.startswith("scalars") else f" ({key[: key.index('|')]})"),
            "value": key,
        }
        for key in options
    ]
    return labels, list(layers)


def grid(
    ctx: AppContext,
    names: Sequence[str],
    sections: Sequence[str],
    pattern: str | None,
    layer: str | None,
    smoothing: float,
    xaxis: str,
    logy: Sequence[str] | None,
) -> tuple[list[Any], list[Any]]:
    """One chart per metric of the chosen sections (matching ``pattern``), and notes."""
    if not names:
        return [], [message("tick runs in the sidebar to compare them")]
    keep = _regex(pattern)
    if pattern and keep is None:
        return [], [message(f"not a regular expression: {pattern!r}", "warning")]
    options, _ = metric_options(ctx, names)
    keys = [o["value"] for o in options]
    charts: list[Any] = []
    notes: list[Any] = []
    skipped = drawn = 0
    for section in SECTIONS:
        if section not in sections:
            continue
        chosen = [k for k in keys if _section(k) == section]
        rank = {f"scalars|{m}": i for i, m in enumerate((*TRAINING, *EVAL))}
        chosen.sort(key=lambda k: rank.get(k, len(rank)))  # loss first, as everywhere
        if keep is not None:
            chosen = [k for k in chosen if keep.search(k.split("|")[1])]
        if not chosen:
            continue
        charts.append(html.H3(section, className="grid-section"))
        if section == "layers" and not layer:
            charts.append(_note("choose a layer in the sidebar"))
            continue
        without = []  # metrics no chosen run has data for: named, not drawn as blank charts
        for key in chosen:
            if drawn >= MAX_CHARTS:
                skipped += 1
                continue
            fig = grid_chart(ctx, names, key, layer, smoothing, xaxis, logy)
            if not fig.data and len(fig.layout.annotations) == 1:  # "no … in the chosen runs"
                without.append(key.split("|")[1])
                continue
            drawn += 1
            graph = dcc.Graph(
                id={"type": "compare-chart", "key": key},
                figure=fig,
                config={"displaylogo": False},
            )
            charts.append(html.Div([graph, _csv_link(names, key, layer)], className="chart"))
        if without:
            text = "no data in the chosen runs: " + ", ".join(without)
            charts.append(_note(text))
    if skipped:
        notes.append(message(f"{skipped} more charts: narrow the metric filter to see them"))
    if not charts:
        notes.append(message("no metric of the chosen sections matches", "warning"))
    return charts, notes


GRID_MARGIN = dict(l=64, r=10, t=40, b=40, autoexpand=False)


def grid_style(fig: go.Figure) -> go.Figure:
    """A grid chart: 260 px high, one hover label listing every run, fixed margins.

    The margins are fixed and axis automargin is off, so the browser lays each of the many
    charts out once (plotly_white's automargin measured every tick label and redrew the chart
    when a label or the legend pushed a margin: about half its drawing time). Each run's colour
    is its swatch in the sidebar and the hover names the runs, so a legend is drawn only where
    the lines are more than runs (a run's eval loaders, dashed after the first).
    """
    loaders = any(LOADER_SEP in str(t.name) for t in fig.data)
    update: dict[str, Any] = {
        "height": 260,
        "hovermode": "x unified",
        "margin": GRID_MARGIN,
        "showlegend": loaders,
        "legend": dict(orientation="h", x=1, y=1.0, xanchor="right", yanchor="bottom"),
    }
    update.update({k: {"automargin": False} for k in ("xaxis", "yaxis")})
    return fig.update_layout(update)


def grid_chart(
    ctx: AppContext,
    names: Sequence[str],
    metric: str,
    layer: str | None,
    smoothing: float,
    xaxis: str,
    logy: Sequence[str] | None,
) -> go.Figure:
    """``figure`` in the grid's style, cached until a chosen run's files change.

    The key holds every input of the chart: the runs' file signatures (of the metric's table
    and of the scalars, whose clock places points on time axes), start times (wall axis) and
    the run list (colours). A grid of two dozen charts is then built once per change, not on
    every visit, filter edit or refresh tick.
    """

    def build() -> go.Figure:
        return grid_style(figure(ctx, names, metric, layer, smoothing, xaxis, logy))

    table_name = metric.partition("|")[0]
    try:
        stamps = []
        for name in names:
            data = ctx.data(name)
            stamps.append((data.key(table_name), data.key("scalars"), data.run.start_time))
    except Exception:  # an unreadable run: figure() names it in the chart, uncached
        return build()
    key = (
        "compare-chart",
        tuple(stamps),
        metric,
        layer,
        smoothing,
        xaxis,
        tuple(logy or ()),
        tuple(ctx.catalog.names()),
    )
    return ctx.cache.get(key, build)


def figure(
    ctx: AppContext,
    names: Sequence[str],
    metric: str | None,
    layer: str | None,
    smoothing: float,
    xaxis: str,
    logy: Sequence[str] | None,
) -> go.Figure:
    """``metric`` (``table|name``) of every chosen run on one set of axes, in the run's colour.

    Probe metrics (sparse) are never smoothed and hover shows each run's raw value; a run
    whose files cannot be read is named in the chart instead of breaking it.
    """
    if not names:
        return empty_figure("choose runs to compare")
    table_name, _, name = (metric or "scalars|loss").partition("|")
    if table_name not in METRIC_TABLES:
        return empty_figure(f"cannot compare {metric!r}")
    where = dict(METRIC_TABLES[table_name])
    if table_name == "layers":
        if not layer:
            return empty_figure("choose a layer")
        where["layer"] = layer
    parts = []
    failed = []
    every: dict[str, int] = {}  # run → every how many steps it recorded the metric
    for run_name in names:
        try:
            data = ctx.data(run_name)
            if table_name == "scalars" and name in EVAL:
                parts.append(_loaders(data, name, run_name))
            elif data.has(table_name) and name in data.metrics(table_name):
                parts.append(_series(data, table_name, name, where).assign(series=run_name))
                every[run_name] = every_of(data.sampling(), table_name, name)
        except Exception as exc:  # one bad run is reported, the others drawn
            failed.append(f"{run_name}: {unreadable_text(exc)}")
    title = name if table_name != "layers" else f"{name} of {layer}"
    if not parts:
        fig = empty_figure(f"no {title} in the chosen runs")
    else:
        axes = axes_from(smoothing, xaxis, logy, None)
        fig = compare_figure(pd.concat(parts, ignore_index=True), title, axes, every)
        colours = run_colours(ctx.catalog.names())
        for trace in fig.data:
            run, _, loader = str(trace.name).removesuffix(" (raw)").partition(LOADER_SEP)
            if run in {escape(n) for n in colours}:
                original = next(n for n in colours if escape(n) == run)
                trace.line.color = colours[original]
                if trace.marker is not None:
                    trace.marker.color = colours[original]
                if loader and not loader.endswith(" 0"):
                    trace.line.dash = "dash"  # the second loader (e.g. test) of a run
        if name == "eval_accuracy":
            fig.update_yaxes(tickformat=".0%")
    for i, text in enumerate(failed):
        fig.add_annotation(
            text=escape(text), xref="paper", yref="paper", x=0, y=1 - 0.08 * i, showarrow=False
        )
    return fig


def config_diff(ctx: AppContext, names: Sequence[str]) -> Any:
    """The config keys (argv, versions, recorded config) whose values differ between runs."""
    if len(names) < 2:
        return message("choose two or more runs to see how their configs differ")
    flat: dict[str, dict[str, object]] = {}
    for name in names:
        try:
            meta = ctx.run(name).meta
        except Exception as exc:
            flat[name] = {"(meta)": unreadable_text(exc)}
            continue
        values: dict[str, object] = {}
        if isinstance(meta.get("argv"), list):
            values["argv"] = " ".join(str(a) for a in meta["argv"])
        values.update(flatten(meta.get("versions"), "versions"))
        values.update(flatten(meta.get("config"), "config"))
        for key in ("git_sha", "device", "command"):
            if meta.get(key) is not None:
                values[key] = meta[key]
        flat[name] = values
    keys = sorted({k for values in flat.values() for k in values})
    rows = [
        [k, *(str(flat[n].get(k, "—")) for n in names)]
        for k in keys
        if len({repr(flat[n].get(k)) for n in names}) > 1
    ]
    if not rows:
        return message("the chosen runs have the same config")
    return table(["key", *names], rows, "config-diff-rows")


# -- helpers -------------------------------------------------------------------------------------


def _run_options(
    names: Sequence[str], colours: Mapping[str, str], marks: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """Checklist options: the run's colour swatch, its name and its health mark."""
    return [
        {
            "label": html.Span(
                [
                    html.Span(className="swatch", style={"background": colours.get(n, "#999")}),
                    n,
                    html.Span(f" {(marks or {}).get(n, '')}", className="mark"),
                ]
            ),
            "value": n,
        }
        for n in names
    ]


def _health_marks(ctx: AppContext, names: Sequence[str]) -> dict[str, str]:
    """✓, ⚠ or ✕ per run: the worst finding of the report (when built)."""
    out = {}
    for name in names:
        try:
            label, _ = health(ctx.findings.state(ctx.run(name), start=False))
        except Exception:
            label = "unreadable"
        out[name] = label.split(" ")[0] if label[:1] in "✓⚠✕" else ""
        if label == "unreadable":
            out[name] = "(unreadable)"
    return out


def _section(key: str) -> str:
    table_name, _, metric = key.partition("|")
    if any(word in metric for word in PROBE_INTERNALS):
        return "internals"  # the probes' own costs and convergence checks
    if table_name == "hessian" and metric == "lr":
        return "internals"  # the training lr at the probe's steps (training shows it whole)
    if table_name == "scalars":
        if metric in EVAL:
            return "evaluation"
        return "internals" if metric in INTERNALS else "training"
    if table_name == "collapse" and metric in COUNTS:
        return "internals"
    if table_name == "softmax" and metric in COUNTS:
        return "internals"
    return {v: k for k, v in SECTIONS.items() if v != "scalars"}.get(table_name, "internals")


def _note(text: str) -> html.Div:
    """A one-line notice across the grid's columns."""
    return html.Div(text, className="message info grid-note")


def _regex(pattern: str | None) -> re.Pattern[str] | None:
    if not pattern:
        return None
    try:
        return re.compile(pattern, re.IGNORECASE)
    except re.error:
        return None


def _csv_link(names: Sequence[str], key: str, layer: str | None) -> html.A:
    table_name, _, metric = key.partition("|")
    query = {"runs": ",".join(names), "table": table_name, "metric": metric}
    if table_name == "layers" and layer:
        query["layer"] = layer
    return html.A(
        f"⤓ {metric} CSV",
        href="/compare.csv?" + urlencode(query),
        className="csv",
        download=f"compare-{quote(metric, safe='')}.csv",
    )


LOADER_SEP = " · "  # "run · loader 1": a run's second eval loader


def _loaders(data: RunData, metric: str, run_name: str) -> pd.DataFrame:
    """An eval metric of every loader of a run: series ``run`` (one loader) or
    ``run · loader i``."""
    frame = data.evaluations(metric)
    if frame.empty:
        return frame
    single = frame["series"].nunique() == 1
    series = [run_name if single else f"{run_name}{LOADER_SEP}{s}" for s in frame["series"]]
    return frame.assign(series=series, start_time=data.run.start_time or 0.0)


def _series(data: RunData, table_name: str, metric: str, where: dict[str, Any]) -> pd.DataFrame:
    frame = data.series(table_name, metric, layer=where.get("layer"), index=where.get("index"))
    return frame.assign(start_time=data.run.start_time or 0.0)
