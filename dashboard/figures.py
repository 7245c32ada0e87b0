"""Training-curve figures: pure functions from DataFrames to plotly Figures.

Frames are long: ``step``, ``value``, optionally ``time`` (seconds since start, for the time
axes) and ``series`` (one trace each). Every trace is downsampled with min/max buckets after
smoothing, so a 100k-step curve ships at most ``max_points`` points per trace and keeps its
spikes. Nothing here reads files.

Figures set no template: assigning one costs tens of milliseconds per figure, so the app sets
plotly's default template once instead (``app.create_app``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape as _html_escape

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from gradlens.dashboard.downsample import minmax_indices
from gradlens.dashboard.smoothing import ema
from gradlens.report.sampling import every_label

__all__ = [
    "DEFAULT_AXES",
    "PALETTE",
    "Axes",
    "compare_figure",
    "curve_with_events",
    "empty_figure",
    "escape",
    "fit_constant_axes",
    "heatmap_figure",
    "is_dense",
    "layer_figure",
    "line_traces",
    "lines_figure",
    "sampled_title",
    "x_values",
]

PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
SPIKE = "#ff7f0e"
NONFINITE = "#d62728"
X_TITLES = {"step": "step", "time": "time since start (s)", "wall": "wall time"}
SPARSE_MARKERS = 600  # a sparse series marks its points up to this many drawn points


@dataclass(frozen=True)
class Axes:
    """How curves are drawn: the controls every page shares.

    ``xaxis`` is ``step``, ``time`` (seconds since start) or ``wall`` (needs ``start_time``,
    a Unix time, or a ``start_time`` column in the frame, e.g. one per compared run);
    ``smoothing`` is TensorBoard's weight in [0, 1) (dense per-step series only);
    ``ignore_outliers`` clips the y axis to the 1st–99th percentile of the drawn lines.
    """

    smoothing: float = 0.0
    xaxis: str = "step"
    log_y: bool = False
    start_time: float | None = None
    max_points: int = 1500  # min/max pairs: about one per pixel column of a wide chart
    ignore_outliers: bool = False


DEFAULT_AXES = Axes()


def escape(text: object) -> str:
    """``text`` with plotly's markup (``<b>``, ``<a href>``, ``<br>``) shown literally.

    Plotly renders a subset of HTML in names, titles and hover labels; layer and run names
    come from user code and folders, so they are escaped wherever plotly draws them.
    """
    return _html_escape(str(text), quote=False)


def empty_figure(message: str) -> go.Figure:
    """A blank figure that says why it is blank."""
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(height=220, margin=dict(l=20, r=20, t=30, b=20))
    return fig


def lines_figure(
    frame: pd.DataFrame,
    title: str,
    axes: Axes = DEFAULT_AXES,
    notes: Mapping[str, str] | None = None,
) -> go.Figure:
    """One line per ``series`` (or one line), smoothed and downsampled.

    With smoothing, the raw curve is drawn faint behind the smoothed one, as TensorBoard does.
    ``notes``: series → a few words its hover adds after the name (e.g. ``every 10 steps``).
    """
    if frame.empty:
        return empty_figure(f"no {title} data")
    fig = go.Figure()
    for i, (name, part) in enumerate(_groups(frame, title)):
        note = (notes or {}).get(str(name), "")
        for trace in line_traces(part, str(name), PALETTE[i % len(PALETTE)], axes, note):
            fig.add_trace(trace)
    _style(fig, title, axes, showlegend="series" in frame)
    return fig


def curve_with_events(
    frame: pd.DataFrame,
    events: pd.DataFrame,
    title: str,
    spike_kinds: Sequence[str],
    nonfinite_kinds: Sequence[str],
    axes: Axes = DEFAULT_AXES,
) -> go.Figure:
    """A curve with markers at spike events and at non-finite steps.

    Spikes sit at the event's value. Non-finite steps (from ``events`` of ``nonfinite_kinds``
    and from NaN/Inf values in ``frame``) cannot be drawn at their value, so they sit at the
    last finite value before them.
    """
    fig = lines_figure(frame, title, axes)
    if frame.empty:
        return fig
    kinds = events["kind"] if not events.empty else pd.Series(dtype=str)
    spikes = events[kinds.isin(list(spike_kinds))] if not events.empty else events
    if not spikes.empty:
        spikes = _attach_time(_event_points(spikes), frame)
        fig.add_trace(_markers(spikes, "spike", "triangle-up", SPIKE, axes))
    bad = _nonfinite_points(frame, events[kinds.isin(list(nonfinite_kinds))])
    if not bad.empty:
        fig.add_trace(_markers(bad, "non-finite", "x", NONFINITE, axes))
    fig.update_layout(showlegend=True)
    return fig


def heatmap_figure(
    cells: pd.DataFrame,
    metric: str,
    last_steps: Sequence[int] | np.ndarray | None = None,
    relative: pd.DataFrame | None = None,
    x: Sequence[object] | np.ndarray | None = None,
    x_title: str = "step",
    every: int = 1,
) -> go.Figure:
    """Layers × step buckets, coloured by log10 of the bucket's max (or of its max ratio).

    ``cells`` has layers as index and the first step of each bucket as columns;
    ``last_steps`` the last step of each bucket (default: one step per bucket). With
    ``relative`` (same shape: each value over the layer's own EMA baseline) the colour is that
    ratio on a diverging scale centred on 1, so the layer a spike finding names is the bright
    row even when its raw norm is small. ``x`` places the buckets on another axis (time); by
    default a bucket sits at the centre of its steps, so it lines up with the curves above.
    Hover shows the bucket's value (and ratio) and its exact step range. ``every``: the metric
    was recorded every this many steps (the title says so; its buckets hold those steps).
    """
    if cells.empty:
        return empty_figure(f"no per-layer {metric} data")
    raw = cells.to_numpy(dtype=np.float64)
    first = np.asarray([int(c) for c in cells.columns], dtype=np.float64)
    last = first.copy() if last_steps is None else np.asarray(last_steps, dtype=np.float64)
    colour = raw if relative is None else relative.to_numpy(dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        logz = np.where(colour > 0, np.log10(colour), np.nan)
    logz = np.where(np.isfinite(logz), logz, np.nan).round(3).astype(np.float32)  # half the JSON
    finite = logz[np.isfinite(logz)]
    sampled = f"{every_label(every)}; " if every > 1 else ""
    stack = [raw, np.broadcast_to(first, raw.shape), np.broadcast_to(last, raw.shape)]
    template = "%{y}<br>steps %{customdata[1]}–%{customdata[2]}<br>max %{customdata[0]:.4g}"
    trace: dict[str, object] = {}
    if relative is None:
        colorbar: dict[str, object] = {"title": {"text": escape(metric)}}
        if finite.size:
            decades = np.arange(np.floor(finite.min()), np.ceil(finite.max()) + 1)
            colorbar.update(tickvals=decades.tolist(), ticktext=[f"1e{int(d)}" for d in decades])
        trace.update(colorscale="Viridis")
        title = f"per-layer {metric} ({sampled}max per step bucket, log colour) — click a layer"
    else:
        top = float(min(2.0, max(1.0, np.abs(finite).max()))) if finite.size else 1.0
        ticks = np.arange(-np.floor(top), np.floor(top) + 1)
        colorbar = {
            "title": {"text": "× baseline"},
            "tickvals": ticks.tolist(),
            "ticktext": [f"×{10.0**t:g}" for t in ticks],
        }
        trace.update(colorscale="RdBu_r", zmid=0.0, zmin=-top, zmax=top)
        stack.append(colour)
        template += "<br>%{customdata[3]:.3g} × its baseline"
        title = (
            f"per-layer {metric} relative to the layer's own EMA baseline"
            f"{f' ({every_label(every)})' if every > 1 else ''} — click a layer"
        )
    centres = (first + last) / 2.0
    names = [escape(i) for i in cells.index]
    colorbar.update(thickness=12, x=1.01, xpad=4, len=1.0)
    fig = go.Figure(
        go.Heatmap(
            z=logz,
            x=centres if x is None else x,
            y=names,
            colorbar=colorbar,
            hoverongaps=False,
            customdata=np.stack(stack, axis=-1).astype(np.float32),
            hovertemplate=template + "<extra></extra>",
            **trace,
        )
    )
    height = int(min(900, max(300, 16 * len(cells.index) + 120)))
    fig.update_layout(
        title=title,
        height=height,
        margin=dict(l=10, r=10, t=40, b=40),
        xaxis_title=x_title,
        yaxis=dict(autorange="reversed", automargin=True),  # update_yaxes: ~90 ms on 200 rows
        uirevision=metric,
    )
    return fig


def layer_figure(
    curves: pd.DataFrame,
    layer: str,
    events: pd.DataFrame | None = None,
    axes: Axes = DEFAULT_AXES,
    sampling: Mapping[str, int] | None = None,
) -> go.Figure:
    """One layer's curves stacked: one row per metric in ``curves`` (shared x axis).

    Per-layer spike events of this layer are marked on its ``grad_norm`` row. ``sampling``:
    metric → every how many steps it was recorded; a sampled row's title says so (its points
    are marked, see :func:`line_traces`).
    """
    if curves.empty:
        return empty_figure(f"no data for layer {layer}")
    metrics = [str(m) for m in curves["metric"].unique()]
    every = {m: (sampling or {}).get(m, 1) for m in metrics}
    titles = [sampled_title(m, every[m]) for m in metrics]
    fig = make_subplots(
        rows=len(metrics), cols=1, shared_xaxes=True, subplot_titles=titles, vertical_spacing=0.08
    )
    for row, metric in enumerate(metrics, start=1):
        part = curves[curves["metric"] == metric]
        note = every_label(every[metric]) if every[metric] > 1 else ""
        for trace in line_traces(part, metric, PALETTE[row - 1], axes, note):
            fig.add_trace(trace, row=row, col=1)
        if metric == "grad_norm" and events is not None and not events.empty:
            mine = events[(events["kind"] == "layer_grad_spike") & (events["layer"] == layer)]
            if not mine.empty:
                spikes = _attach_time(_event_points(mine), part)
                fig.add_trace(_markers(spikes, "spike", "triangle-up", SPIKE, axes), row=row, col=1)
        if axes.log_y:
            fig.update_yaxes(type="log", row=row, col=1)
    fig.update_layout(
        title=f"layer {escape(layer)}",
        height=220 * len(metrics) + 60,
        margin=dict(l=10, r=10, t=60, b=40),
        showlegend=False,
        uirevision=f"{layer}/{axes.xaxis}",
    )
    fig.update_xaxes(title_text=X_TITLES.get(axes.xaxis, "step"), row=len(metrics), col=1)
    return fit_constant_axes(fig)


def compare_figure(
    frame: pd.DataFrame,
    metric: str,
    axes: Axes = DEFAULT_AXES,
    every: Mapping[str, int] | None = None,
) -> go.Figure:
    """Runs overlaid on one metric: ``frame`` has one ``series`` per run.

    ``every``: run → every how many steps it recorded the metric; the title says so when the
    runs agree (else that it differs), and the hover of each sampled run.
    """
    if frame.empty:
        return empty_figure(f"no {metric} data in the chosen runs")
    every = every or {}
    notes = {run: every_label(k) for run, k in every.items() if k > 1}
    runs = [str(s) for s in frame["series"].unique()] if "series" in frame else []
    schedules = sorted({every.get(run, 1) for run in runs})
    sampled = ", ".join(str(k) for k in schedules if k > 1)
    title = metric
    if len(schedules) == 1:
        title = sampled_title(metric, schedules[0])
    elif schedules[0] == 1 and sampled:
        title = f"{metric} (every {sampled} steps in some runs)"
    elif sampled:
        title = f"{metric} (every {sampled} steps, by run)"
    return lines_figure(frame, title, axes, notes)


def sampled_title(metric: str, every: int) -> str:
    """``update_ratio (every 10 steps)`` for a sampled metric; the name alone otherwise."""
    return f"{metric} ({every_label(every)})" if every > 1 else metric


# -- helpers ---------------------------------------------------------------------------------


def _groups(frame: pd.DataFrame, name: str) -> list[tuple[object, pd.DataFrame]]:
    if "series" not in frame:
        return [(name, frame)]
    return list(frame.groupby("series", sort=False))


def x_values(frame: pd.DataFrame, axes: Axes) -> np.ndarray:
    """The x coordinates of ``frame``'s rows on ``axes``: steps, seconds or local times."""
    if axes.xaxis in ("time", "wall") and "time" in frame:
        seconds = frame["time"].to_numpy(dtype=np.float64)
        if axes.xaxis == "time":
            return seconds
        start = frame["start_time"].to_numpy() if "start_time" in frame else axes.start_time
        if start is not None:
            local = datetime.now().astimezone().tzinfo
            stamps = pd.to_datetime(start + seconds, unit="s", utc=True)
            return np.asarray(stamps.tz_convert(local).tz_localize(None))
    return frame["step"].to_numpy()


def is_dense(steps: np.ndarray) -> bool:
    """True for a per-step series (most gaps one step); probe series every N steps are not."""
    steps = np.asarray(steps)
    if steps.size < 3:
        return False
    return float(np.median(np.diff(np.sort(steps)))) <= 1.0


def line_traces(
    part: pd.DataFrame, name: str, color: str, axes: Axes, note: str = ""
) -> list[go.Scatter]:
    """A series (columns step, value, maybe time) as its line: smoothed when dense (then the
    raw curve faint behind), downsampled, with the raw value and step on hover (``note`` in
    brackets after the name).

    A series not recorded every step (probes, metrics sampled every few steps) is never
    smoothed and marks its points, so the line between two of them reads as the straight join
    it is; past ``SPARSE_MARKERS`` drawn points a marker each would only blur the line."""
    part = part.sort_values("step", kind="stable", ignore_index=True)
    y = part["value"].to_numpy(dtype=np.float64)
    steps = part["step"].to_numpy()
    raw_shown = np.where(np.isfinite(y), y, np.nan)  # plotly cannot draw ±inf
    traces = []
    smooth = axes.smoothing > 0 and is_dense(steps)  # a few probe points are never averaged
    shown = raw_shown
    if smooth:
        idx = minmax_indices(raw_shown, axes.max_points)
        raw = go.Scatter(
            x=x_values(part.iloc[idx], axes),
            y=raw_shown[idx],
            mode="lines",
            name=f"{name} (raw)",
            opacity=0.25,
            line=dict(color=color, width=1),
            showlegend=False,
            hoverinfo="skip",
        )
        traces.append(raw)
        smoothed = ema(y, axes.smoothing)
        shown = np.where(np.isfinite(smoothed), smoothed, np.nan)
    idx = minmax_indices(shown, axes.max_points)
    label = escape(name)
    template = f"{label}{f' ({escape(note)})' if note else ''}: %{{customdata[0]:.5g}}"
    if smooth:
        template += " (smoothed %{y:.5g})"
    template += "<br>step %{customdata[1]}"
    seconds = part["time"].to_numpy(dtype=np.float64) if "time" in part else None
    columns = [y[idx], steps[idx]]
    if seconds is not None and np.isfinite(seconds[idx]).any():
        template += ", %{customdata[2]:.1f} s"
        columns.append(seconds[idx])
    template += "<extra></extra>"
    sparse = len(idx) <= 60 or (len(idx) <= SPARSE_MARKERS and not is_dense(steps))
    line = go.Scatter(
        x=x_values(part.iloc[idx], axes),
        y=shown[idx],
        mode="lines+markers" if sparse else "lines",
        name=label,
        line=dict(color=color, width=1.6),
        marker=dict(size=5),
        customdata=np.column_stack(columns),
        hovertemplate=template,
    )
    if len(idx) == 1 and np.isfinite(shown[idx[0]]):  # one probe: a point that says its value
        line.update(
            mode="markers+text",
            text=[f"{y[idx[0]]:.4g}"],
            textposition="top center",
            marker=dict(size=9),
        )
    traces.append(line)
    return traces


def _markers(points: pd.DataFrame, name: str, symbol: str, color: str, axes: Axes) -> go.Scatter:
    if len(points) > axes.max_points:  # e.g. a run that stayed NaN for 100k steps
        points = points.iloc[np.linspace(0, len(points) - 1, axes.max_points).astype(int)]
    n = len(points)

    def column(key: str) -> np.ndarray:
        if key in points:
            return points[key].to_numpy(dtype=np.float64, na_value=np.nan)
        return np.full(n, np.nan)

    detail = points["layer"].fillna("").astype(str) if "layer" in points else pd.Series([""] * n)
    text = [f"<br>layer {escape(layer)}" if layer else "" for layer in detail]
    template = f"{name} at step %{{customdata[0]}}%{{text}}"
    if "ratio" in points and points["ratio"].notna().any():
        template += "<br>%{customdata[1]:.3g} × baseline %{customdata[2]:.4g}"
    template += "<br>value %{customdata[3]:.5g}<extra></extra>"
    return go.Scatter(
        x=x_values(points, axes),
        y=points["value"].to_numpy(dtype=np.float64),
        mode="markers",
        name=name,
        marker=dict(symbol=symbol, size=10, color=color, line=dict(width=1, color="white")),
        hovertemplate=template,
        text=text,
        customdata=np.column_stack(
            [points["step"].to_numpy(), column("ratio"), column("baseline"), column("raw")]
        ),
    )


def _event_points(events: pd.DataFrame) -> pd.DataFrame:
    """Spike events as marker points: step, value (where drawn), raw, ratio, baseline, layer."""
    cols = [c for c in ("step", "value", "ratio", "baseline", "layer") if c in events]
    return events[cols].assign(raw=events["value"])


def _attach_time(points: pd.DataFrame, curve: pd.DataFrame) -> pd.DataFrame:
    """``points`` with the ``time`` of their steps, interpolated from ``curve``."""
    points = points.copy()
    if "time" in curve and len(curve):
        ordered = curve.sort_values("step")
        points["time"] = np.interp(points["step"], ordered["step"], ordered["time"])
    return points


def _nonfinite_points(frame: pd.DataFrame, events: pd.DataFrame) -> pd.DataFrame:
    """Steps where the curve is NaN/Inf (or an event says so), placed at the last finite value."""
    ordered = frame.sort_values("step", kind="stable")
    values = ordered["value"].to_numpy(dtype=np.float64)
    finite = np.isfinite(values)
    steps = set(ordered["step"].to_numpy()[~finite].tolist())
    steps |= set(events["step"].tolist()) if not events.empty else set()
    if not steps:
        return pd.DataFrame(columns=["step", "value"])
    anchor = pd.Series(np.where(finite, values, np.nan)).ffill().bfill().fillna(0.0)
    at = np.array(sorted(steps))
    pos = np.clip(np.searchsorted(ordered["step"].to_numpy(), at, side="right") - 1, 0, None)
    pos = np.minimum(pos, len(ordered) - 1)
    raw = pd.Series(values, index=ordered["step"].to_numpy())
    raw = raw[~raw.index.duplicated(keep="last")].reindex(at).to_numpy(dtype=np.float64)
    points = pd.DataFrame({"step": at, "value": anchor.to_numpy()[pos], "raw": raw})
    return _attach_time(points, ordered)


def clip_outliers(fig: go.Figure, low: float = 1.0, high: float = 99.0) -> go.Figure:
    """Set each y axis to the ``low``–``high`` percentile of its lines (markers excluded)."""
    for key, y in _axis_values(fig, lines_only=True).items():
        if y.size < 10:
            continue
        log = fig.layout[key].type == "log"
        if log:
            y = np.log10(y[y > 0])
            if y.size < 10:
                continue
        lo, hi = np.percentile(y, [low, high])
        pad = 0.05 * (hi - lo) if hi > lo else max(abs(lo) * 0.1, 1e-12)
        fig.layout[key].update(range=[lo - pad, hi + pad], autorange=False)
    return fig


def _axis_values(fig: go.Figure, lines_only: bool = False) -> dict[str, np.ndarray]:
    """Finite y values drawn on each y axis (layout key → values)."""
    values: dict[str, list[np.ndarray]] = {}
    for trace in fig.data:
        y = getattr(trace, "y", None)
        if y is None or getattr(trace, "type", "scatter") not in ("scatter", "scattergl"):
            continue
        if lines_only and (trace.mode == "markers" or trace.hoverinfo == "skip"):
            continue
        key = "yaxis" + str(trace.yaxis or "y")[1:]
        values.setdefault(key, []).append(np.asarray(y, dtype=np.float64))
    out = {}
    for key, parts in values.items():
        y = np.concatenate(parts)
        out[key] = y[np.isfinite(y)]
    return out


def fit_constant_axes(fig: go.Figure) -> go.Figure:
    """Give every y axis whose drawn values are all equal a range around that value.

    Plotly draws a constant series on a −1…+1 axis with the line at 0, so a learning rate of
    0.01 would read as 0; the axis is centred on the value instead and says it is constant.
    """
    for key, y in _axis_values(fig).items():
        if y.size == 0 or y.min() != y.max():
            continue
        v = float(y[0])
        log = fig.layout[key].type == "log"
        if log and v > 0:
            lo, hi = np.log10(v) - 0.5, np.log10(v) + 0.5
        elif v != 0:
            lo, hi = v - 0.5 * abs(v), v + 0.5 * abs(v)
        else:
            lo, hi = -0.5, 0.5
        fig.layout[key].update(range=[lo, hi], autorange=False)
        ref = "y" + key[5:]
        fig.add_annotation(
            text=f"constant {v:.6g}",
            xref=("x" + key[5:]) + " domain",
            yref=ref + " domain",
            x=0.01,
            y=0.97,
            showarrow=False,
            font=dict(size=11, color="#555"),
            xanchor="left",
        )
    return fig


def _style(fig: go.Figure, title: str, axes: Axes, showlegend: bool) -> None:
    fig.update_layout(
        title=title,
        height=300,
        margin=dict(l=10, r=10, t=40, b=40),
        showlegend=showlegend,
        legend=dict(orientation="h", y=-0.25),
        xaxis_title=X_TITLES.get(axes.xaxis, "step"),
        yaxis_type="log" if axes.log_y else "linear",
        uirevision=f"{title}/{axes.xaxis}/{axes.log_y}",
    )
    if axes.ignore_outliers:
        clip_outliers(fig)
    fit_constant_axes(fig)
