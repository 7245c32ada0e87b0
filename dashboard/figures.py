"""Training-curve figures: pure functions from DataFrames to plotly Figures.

Frames are long: ``step``, ``value``, optionally ``time`` (seconds since start, for the time
axes) and ``series`` (one trace each). Every trace is downsampled with min/max buckets after
smoothing, so a 100k-step curve ships at most ``max_points`` points per trace and keeps its
spikes. Nothing here reads files.

Figures set no template: assigning one costs tens of milliseconds per figure, so the app sets
plotly's default template once instead (``app.create_app``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from gradlens.dashboard.downsample import minmax_indices
from gradlens.dashboard.smoothing import ema

__all__ = [
    "DEFAULT_AXES",
    "PALETTE",
    "Axes",
    "compare_figure",
    "curve_with_events",
    "empty_figure",
    "heatmap_figure",
    "layer_figure",
    "lines_figure",
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


@dataclass(frozen=True)
class Axes:
    """How curves are drawn: the controls every page shares.

    ``xaxis`` is ``step``, ``time`` (seconds since start) or ``wall`` (needs ``start_time``,
    a Unix time, or a ``start_time`` column in the frame, e.g. one per compared run);
    ``smoothing`` is TensorBoard's weight in [0, 1).
    """

    smoothing: float = 0.0
    xaxis: str = "step"
    log_y: bool = False
    start_time: float | None = None
    max_points: int = 2000


DEFAULT_AXES = Axes()


def empty_figure(message: str) -> go.Figure:
    """A blank figure that says why it is blank."""
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(height=220, margin=dict(l=20, r=20, t=30, b=20))
    return fig


def lines_figure(frame: pd.DataFrame, title: str, axes: Axes = DEFAULT_AXES) -> go.Figure:
    """One line per ``series`` (or one line), smoothed and downsampled.

    With smoothing, the raw curve is drawn faint behind the smoothed one, as TensorBoard does.
    """
    if frame.empty:
        return empty_figure(f"no {title} data")
    fig = go.Figure()
    for i, (name, part) in enumerate(_groups(frame, title)):
        for trace in _line_traces(part, str(name), PALETTE[i % len(PALETTE)], axes):
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
        spikes = _attach_time(spikes[["step", "value"]], frame)
        fig.add_trace(_markers(spikes, "spike", "triangle-up", SPIKE, axes))
    bad = _nonfinite_points(frame, events[kinds.isin(list(nonfinite_kinds))])
    if not bad.empty:
        fig.add_trace(_markers(bad, "non-finite", "x", NONFINITE, axes))
    fig.update_layout(showlegend=True)
    return fig


def heatmap_figure(cells: pd.DataFrame, metric: str) -> go.Figure:
    """Layers × step buckets with a log colour scale (log10 of the bucket's max).

    ``cells`` has layers as index and the first step of each bucket as columns. Values that
    are not positive have no logarithm and are left blank.
    """
    if cells.empty:
        return empty_figure(f"no per-layer {metric} data")
    raw = cells.to_numpy(dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        logz = np.where(raw > 0, np.log10(raw), np.nan)
    logz = np.where(np.isfinite(logz), logz, np.nan).round(3)
    finite = logz[np.isfinite(logz)]
    colorbar: dict[str, object] = {"title": {"text": metric}}
    if finite.size:
        decades = np.arange(np.floor(finite.min()), np.ceil(finite.max()) + 1)
        colorbar.update(tickvals=decades.tolist(), ticktext=[f"1e{int(d)}" for d in decades])
    fig = go.Figure(
        go.Heatmap(
            z=logz,
            x=[int(c) for c in cells.columns],
            y=[str(i) for i in cells.index],
            colorscale="Viridis",
            colorbar=colorbar,
            hoverongaps=False,
            hovertemplate="%{y}<br>step ≥ %{x}<br>log10 max = %{z}<extra></extra>",
        )
    )
    height = int(min(900, max(300, 16 * len(cells.index) + 120)))
    fig.update_layout(
        title=f"per-layer {metric} (max per step bucket, log colour) — click a layer",
        height=height,
        margin=dict(l=10, r=10, t=40, b=40),
        xaxis_title="step",
        uirevision=metric,
    )
    fig.update_yaxes(autorange="reversed", automargin=True)
    return fig


def layer_figure(
    curves: pd.DataFrame,
    layer: str,
    events: pd.DataFrame | None = None,
    axes: Axes = DEFAULT_AXES,
) -> go.Figure:
    """One layer's curves stacked: one row per metric in ``curves`` (shared x axis).

    Per-layer spike events of this layer are marked on its ``grad_norm`` row.
    """
    if curves.empty:
        return empty_figure(f"no data for layer {layer}")
    metrics = [str(m) for m in curves["metric"].unique()]
    fig = make_subplots(
        rows=len(metrics), cols=1, shared_xaxes=True, subplot_titles=metrics, vertical_spacing=0.08
    )
    for row, metric in enumerate(metrics, start=1):
        part = curves[curves["metric"] == metric]
        for trace in _line_traces(part, metric, PALETTE[row - 1], axes):
            fig.add_trace(trace, row=row, col=1)
        if metric == "grad_norm" and events is not None and not events.empty:
            mine = events[(events["kind"] == "layer_grad_spike") & (events["layer"] == layer)]
            if not mine.empty:
                spikes = _attach_time(mine[["step", "value"]], part)
                fig.add_trace(_markers(spikes, "spike", "triangle-up", SPIKE, axes), row=row, col=1)
        if axes.log_y:
            fig.update_yaxes(type="log", row=row, col=1)
    fig.update_layout(
        title=f"layer {layer}",
        height=220 * len(metrics) + 60,
        margin=dict(l=10, r=10, t=60, b=40),
        showlegend=False,
        uirevision=f"{layer}/{axes.xaxis}",
    )
    fig.update_xaxes(title_text=X_TITLES.get(axes.xaxis, "step"), row=len(metrics), col=1)
    return fig


def compare_figure(frame: pd.DataFrame, metric: str, axes: Axes = DEFAULT_AXES) -> go.Figure:
    """Runs overlaid on one metric: ``frame`` has one ``series`` per run."""
    if frame.empty:
        return empty_figure(f"no {metric} data in the chosen runs")
    return lines_figure(frame, metric, axes)


# -- helpers ---------------------------------------------------------------------------------


def _groups(frame: pd.DataFrame, name: str) -> list[tuple[object, pd.DataFrame]]:
    if "series" not in frame:
        return [(name, frame)]
    return list(frame.groupby("series", sort=False))


def _x(frame: pd.DataFrame, axes: Axes) -> np.ndarray:
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


def _line_traces(part: pd.DataFrame, name: str, color: str, axes: Axes) -> list[go.Scatter]:
    part = part.sort_values("step", kind="stable", ignore_index=True)
    y = part["value"].to_numpy(dtype=np.float64)
    shown = np.where(np.isfinite(y), y, np.nan)  # plotly cannot draw ±inf
    traces = []
    if axes.smoothing > 0:
        idx = minmax_indices(shown, axes.max_points)
        raw = go.Scatter(
            x=_x(part.iloc[idx], axes),
            y=shown[idx],
            mode="lines",
            name=f"{name} (raw)",
            opacity=0.25,
            line=dict(color=color, width=1),
            showlegend=False,
            hoverinfo="skip",
        )
        traces.append(raw)
        smooth = ema(y, axes.smoothing)
        shown = np.where(np.isfinite(smooth), smooth, np.nan)
    idx = minmax_indices(shown, axes.max_points)
    line = go.Scatter(
        x=_x(part.iloc[idx], axes),
        y=shown[idx],
        mode="lines" if len(idx) > 60 else "lines+markers",
        name=name,
        line=dict(color=color, width=1.6),
        marker=dict(size=4),
    )
    traces.append(line)
    return traces


def _markers(points: pd.DataFrame, name: str, symbol: str, color: str, axes: Axes) -> go.Scatter:
    if len(points) > axes.max_points:  # e.g. a run that stayed NaN for 100k steps
        points = points.iloc[np.linspace(0, len(points) - 1, axes.max_points).astype(int)]
    return go.Scatter(
        x=_x(points, axes),
        y=points["value"].to_numpy(dtype=np.float64),
        mode="markers",
        name=name,
        marker=dict(symbol=symbol, size=10, color=color, line=dict(width=1, color="white")),
        hovertemplate=f"{name} at step %{{customdata}}<extra></extra>",
        customdata=points["step"].to_numpy(),
    )


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
    points = pd.DataFrame({"step": at, "value": anchor.to_numpy()[pos]})
    return _attach_time(points, ordered)


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
