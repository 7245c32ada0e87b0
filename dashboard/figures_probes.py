"""Probe figures (curvature, landscape, collapse): pure functions from the probe tables.

Frames are the tables as ``gradlens.store.schema`` documents them (long format). Probes run
on sparse schedules, so their curves are drawn with markers. Nothing here reads files.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from gradlens.dashboard.figures import (
    DEFAULT_AXES,
    PALETTE,
    SPIKE,
    X_TITLES,
    Axes,
    empty_figure,
    escape,
    fit_constant_axes,
    line_traces,
    lines_figure,
    sampled_title,
    x_values,
)

__all__ = [
    "COLLAPSE_FAMILIES",
    "add_event_rug",
    "collapse_figure",
    "density_figure",
    "eigenvalues_figure",
    "landscape_1d_figure",
    "landscape_contour_figure",
    "landscape_slices",
    "landscape_surface_figure",
    "sharpness_figure",
    "softmax_figure",
    "trace_figure",
]

# panel title -> the softmax-table metrics drawn in it (gradlens.functional.softmax names)
SOFTMAX_PANELS = (
    ("softmax collapse (fraction of samples)", ("saturated_fraction", "zero_loss_fraction")),
    ("logit gap (top-1 − top-2)", ("max_logit_gap", "mean_logit_gap")),
    ("log Z", ("log_z_mean", "log_z_max", "log_z")),
)
# panel title -> neural-collapse metrics (gradlens.functional.collapse names); counts such as
# num_classes are facts about the probe, not curves
COLLAPSE_FAMILIES = (
    ("NC1: within-class variability (→ 0)", ("nc1", "nc1_quotient", "cdnv")),
    (
        "NC2: class means → simplex ETF",
        (
            "nc2_etf_distance",
            "nc2_equinorm",
            "nc2_equiangular",
            "nc2_max_angle",
            "nc2_identity_distance",
            "nc2_etf_distance_raw",
            "nc2_equinorm_w",
            "nc2_equiangular_w",
            "nc2_max_angle_w",
        ),
    ),
    ("NC3: classifier ↔ class means (→ 0)", ("nc3", "nc3_duality")),
    ("NC4: nearest class centre disagreement (→ 0)", ("nc4",)),
)
COUNTS = ("num_classes", "num_samples")


def eigenvalues_figure(
    hessian: pd.DataFrame, axes: Axes = DEFAULT_AXES, layer: str = ""
) -> go.Figure:
    """Top-k Hessian eigenvalues over steps: one line per k (``index``), plus λmin if present."""
    rows = _global(hessian, layer)
    top = rows[rows["metric"] == "top_eigenvalue"] if not rows.empty else rows
    if top.empty:
        return empty_figure("no top_eigenvalue rows in the hessian table")
    frame = top.assign(series=[f"λ{int(k) + 1}" for k in top["index"]])
    low = rows[rows["metric"] == "lambda_min"]
    notes = []
    if not low.empty and axes.log_y and not (low["value"] > 0).any():
        notes.append("λmin ≤ 0 at every probe: not drawn on a log axis")
        low = low.iloc[0:0]
    if not low.empty:
        frame = pd.concat([frame, low.assign(series="λmin")], ignore_index=True)
    if axes.log_y:  # a log axis cannot show values ≤ 0: leave gaps, not misleading lines
        frame = frame.assign(value=frame["value"].where(frame["value"] > 0))
    fig = lines_figure(frame[["step", "value", "series", *_time(frame)]], "top eigenvalues", axes)
    for i, note in enumerate(notes):
        fig.add_annotation(
            text=note,
            xref="paper",
            yref="paper",
            x=1,
            y=1.0 - 0.08 * i,
            showarrow=False,
            xanchor="right",
            font=dict(size=11, color="#555"),
        )
    return fig


def sharpness_figure(
    hessian: pd.DataFrame, lr: pd.DataFrame, axes: Axes = DEFAULT_AXES
) -> go.Figure:
    """Sharpness (λmax) against the edge of stability 2/lr (Cohen et al. 2021).

    Both on one log axis clipped to the sharpness range (a decade either side, and up to the
    edge when it is within a decade): 2/lr in warm-up is ~10⁴ and would flatten λmax to
    zero. When 2/lr lies above the chart, a note says how far.
    """
    rows = _global(hessian, "")
    sharp = rows[rows["metric"] == "sharpness"] if not rows.empty else rows
    if sharp.empty and not rows.empty:
        sharp = rows[(rows["metric"] == "top_eigenvalue") & (rows["index"] == 0)]
    if sharp.empty:
        return empty_figure("no sharpness in the hessian table")
    parts = [sharp.assign(series="sharpness λmax")]
    edge = lr[lr["value"] > 0] if not lr.empty else lr
    if not edge.empty:
        parts.append(edge.assign(value=2.0 / edge["value"], series="2 / lr"))
    frame = pd.concat(parts, ignore_index=True)
    frame = frame.assign(value=frame["value"].where(frame["value"] > 0))
    log_axes = Axes(
        smoothing=0.0,
        xaxis=axes.xaxis,
        log_y=True,
        start_time=axes.start_time,
        max_points=axes.max_points,
    )
    fig = lines_figure(
        frame[["step", "value", "series", *_time(frame)]], "sharpness vs 2/lr", log_axes
    )
    positive = sharp["value"][sharp["value"] > 0]
    if positive.empty:
        return fig
    lo, hi = np.log10(float(positive.min())) - 0.3, np.log10(float(positive.max())) + 0.3
    if not edge.empty:
        edge_low = np.log10(float((2.0 / edge["value"]).min()))
        if edge_low <= hi + 1.0:
            hi = max(hi, edge_low + 0.2)
        else:
            fig.add_annotation(
                text=f"2/lr ≥ {10**edge_low:.3g}: above the chart "
                f"({10 ** (edge_low - np.log10(float(positive.max()))):.3g}× the largest λmax)",
                xref="paper",
                yref="paper",
                x=1,
                y=1,
                showarrow=False,
                xanchor="right",
                font=dict(size=11, color="#555"),
            )
    fig.update_yaxes(range=[lo, hi], autorange=False)
    return fig


def trace_figure(hessian: pd.DataFrame, axes: Axes = DEFAULT_AXES) -> go.Figure:
    """Hessian trace over steps with its Hutchinson standard error as error bars."""
    rows = _global(hessian, "")
    trace = rows[rows["metric"] == "trace"].sort_values("step") if not rows.empty else rows
    if trace.empty:
        return empty_figure("no trace in the hessian table")
    err = rows[rows["metric"] == "trace_stderr"].set_index("step")["value"]
    fig = go.Figure(
        go.Scatter(
            x=x_values(trace, axes),
            y=trace["value"],
            mode="lines+markers",
            name="trace",
            line=dict(color=PALETTE[0]),
            error_y=dict(type="data", array=err.reindex(trace["step"]).to_numpy(), visible=True),
        )
    )
    _style(fig, "Hessian trace", X_TITLES.get(axes.xaxis, "step"), axes.log_y)
    return fig


def density_figure(spectrum: pd.DataFrame, step: int) -> go.Figure:
    """Spectral density at one step (log y): the SLQ density curve and its quadrature nodes."""
    rows = spectrum[spectrum["step"] == step] if not spectrum.empty else spectrum
    if rows.empty:
        return empty_figure(f"no spectral density at step {step}")
    fig = go.Figure()
    density = rows[rows["kind"] == "density"].sort_values("x")
    if not density.empty:
        fig.add_trace(go.Scatter(x=density["x"], y=density["value"], mode="lines", name="density"))
    nodes = rows[rows["kind"] == "quadrature"]
    if not nodes.empty:
        fig.add_trace(
            go.Scatter(
                x=nodes["x"],
                y=nodes["value"],
                mode="markers",
                name="quadrature weights",
                marker=dict(color=PALETTE[1], size=7),
            )
        )
    _style(fig, f"spectral density at step {step}", "eigenvalue", log_y=True)
    values = rows["value"].to_numpy(dtype=np.float64)
    values = values[np.isfinite(values) & (values > 0)]
    if values.size:
        top = float(np.log10(values.max()))
        fig.update_yaxes(range=[top - 6.0, top + 0.3], autorange=False)  # six decades
        support = density[density["value"] > 10.0 ** (top - 6.0)] if not density.empty else rows
        xs = pd.concat([support["x"], nodes["x"]]).to_numpy(dtype=np.float64)
        xs = xs[np.isfinite(xs)]
        if xs.size:
            pad = 0.05 * max(float(xs.max() - xs.min()), 1e-12)
            fig.update_xaxes(range=[float(xs.min()) - pad, float(xs.max()) + pad])
    return fig


def landscape_slices(frame: pd.DataFrame) -> dict[str, int]:
    """Each slice's dimension: 1 when beta is absent/constant, else 2 (grid rows only)."""
    grid = frame.dropna(subset=["alpha"]) if not frame.empty else frame
    out = {}
    for name, part in grid.groupby("slice", sort=False):
        out[str(name)] = 2 if part["beta"].dropna().nunique() > 1 else 1
    return out


def landscape_1d_figure(frame: pd.DataFrame, metric: str = "loss") -> go.Figure:
    """1-D slices at one step: ``metric`` against alpha, one line per slice."""
    slices = [s for s, dim in landscape_slices(frame).items() if dim == 1]
    if not slices:
        return empty_figure("no 1-D landscape slice at this step")
    fig = go.Figure()
    for i, name in enumerate(slices):
        part = frame[(frame["slice"] == name) & (frame["metric"] == metric)].dropna(
            subset=["alpha"]
        )
        part = part.sort_values("alpha")
        fig.add_trace(
            go.Scatter(
                x=part["alpha"],
                y=part["value"],
                mode="lines+markers",
                name=escape(name),
                line=dict(color=PALETTE[i % len(PALETTE)]),
            )
        )
    _style(fig, f"1-D {metric} slices", "alpha", log_y=False)
    return fig


def landscape_contour_figure(
    frame: pd.DataFrame, metric: str = "loss", slice_name: str | None = None
) -> go.Figure:
    """A 2-D slice at one step (default: the first) as a contour plot over (alpha, beta)."""
    found = _grid(frame, metric, slice_name)
    if found is None:
        return empty_figure(f"no 2-D {metric} slice at this step")
    name, grid = found
    fig = go.Figure(
        go.Contour(
            z=grid.to_numpy(),
            x=grid.columns.to_numpy(),
            y=grid.index.to_numpy(),
            colorscale="Viridis",
            contours=dict(showlabels=True),
            colorbar=dict(title=dict(text=metric)),
        )
    )
    fig.add_trace(
        go.Scatter(x=[0], y=[0], mode="markers", name="θ", marker=dict(color="white", size=9))
    )
    _style(fig, f"{escape(name)}: {metric} contour", "alpha", log_y=False)
    fig.update_layout(yaxis_title="beta", height=420)
    return fig


def landscape_surface_figure(
    frame: pd.DataFrame, metric: str = "loss", slice_name: str | None = None
) -> go.Figure:
    """A 2-D slice at one step (default: the first) as a 3-D surface."""
    found = _grid(frame, metric, slice_name)
    if found is None:
        return empty_figure(f"no 2-D {metric} slice at this step")
    name, grid = found
    fig = go.Figure(
        go.Surface(
            z=grid.to_numpy(),
            x=grid.columns.to_numpy(),
            y=grid.index.to_numpy(),
            colorscale="Viridis",
        )
    )
    fig.update_layout(
        title=f"{escape(name)}: {metric} surface",
        height=420,
        margin=dict(l=0, r=0, t=40, b=0),
        scene=dict(
            xaxis_title="alpha",
            yaxis_title="beta",
            zaxis_title=metric,
            aspectmode="cube",
            camera=dict(eye=dict(x=1.3, y=1.3, z=0.8)),
            domain=dict(x=[0, 1], y=[0, 1]),
        ),
    )
    return fig


def collapse_figure(collapse: pd.DataFrame, axes: Axes = DEFAULT_AXES) -> go.Figure:
    """Neural-collapse metrics over steps, one panel per family (NC1, NC2, NC3, NC4).

    Lines (a marker only where a metric has a single probe, labelled with its value); counts
    such as ``num_classes`` are left out; ``axes.log_y`` applies to every panel.
    """
    if collapse.empty:
        return empty_figure("no neural-collapse data")
    known = {m for _, names in COLLAPSE_FAMILIES for m in names}
    present = set(collapse["metric"].astype(str))
    panels = [(t, [m for m in names if m in present]) for t, names in COLLAPSE_FAMILIES]
    others = sorted(present - known - set(COUNTS))
    if others:
        panels.append(("other collapse metrics", others))
    return _panels(collapse, [(t, names) for t, names in panels if names], axes, "neural collapse")


def softmax_figure(softmax: pd.DataFrame, axes: Axes = DEFAULT_AXES, every: int = 1) -> go.Figure:
    """Softmax-collapse signals stacked: saturated fraction, logit gap, log Z.

    ``every``: the signals were recorded every this many steps (``softmax_every``); the title
    says so.
    """
    rows = _global(softmax, "")
    present = set(rows["metric"].astype(str)) if not rows.empty else set()
    panels = [(t, [m for m in names if m in present]) for t, names in SOFTMAX_PANELS]
    panels = [(t, names) for t, names in panels if names]
    if not panels:
        return empty_figure("no softmax-collapse data")
    return _panels(rows, panels, axes, sampled_title("softmax collapse", every))


def add_event_rug(fig: go.Figure, events: pd.DataFrame, axes: Axes, steps: pd.DataFrame) -> None:
    """Loss and gradient spikes as ticks along the bottom of ``fig`` (hover: step, ratio).

    ``steps`` (columns step, time) places them on a time axis. Drawn on an overlaid, hidden
    y axis so the chart's own y range is untouched.
    """
    if events.empty or "kind" not in events:
        return
    spikes = events[events["kind"].isin(["loss_spike", "grad_spike"])]
    if spikes.empty:
        return
    points = spikes[["step", "kind"]].drop_duplicates("step").copy()
    if "time" in steps and len(steps):
        ordered = steps.sort_values("step")
        points["time"] = np.interp(points["step"], ordered["step"], ordered["time"])
    fig.add_trace(
        go.Scatter(
            x=x_values(points, axes),
            y=np.full(len(points), 0.02),
            yaxis="y9",
            mode="markers",
            name="spikes",
            marker=dict(symbol="triangle-up", size=8, color=SPIKE),
            customdata=points["step"].to_numpy(),
            text=points["kind"].str.replace("_", " "),
            hovertemplate="%{text} at step %{customdata}<extra></extra>",
        )
    )
    fig.update_layout(
        yaxis9=dict(overlaying="y", range=[0, 1], visible=False, fixedrange=True),
        showlegend=True,
    )


# -- helpers ---------------------------------------------------------------------------------


def _panels(
    rows: pd.DataFrame, panels: list[tuple[str, list[str]]], axes: Axes, title: str
) -> go.Figure:
    fig = make_subplots(
        rows=len(panels),
        cols=1,
        shared_xaxes=True,
        subplot_titles=[t for t, _ in panels],
        vertical_spacing=min(0.12, 0.3 / max(len(panels), 1)),
    )
    for row, (_, names) in enumerate(panels, start=1):
        # distinct colours within a panel, each panel with its own legend
        for colour, metric in enumerate(names):
            part = rows[rows["metric"] == metric]
            if axes.log_y:
                part = part.assign(value=part["value"].where(part["value"] > 0))
            traces = line_traces(part, metric, PALETTE[colour % len(PALETTE)], axes)
            for trace in traces:  # (a single probe is a point labelled with its value)
                trace.update(legend="legend" if row == 1 else f"legend{row}")
                fig.add_trace(trace, row=row, col=1)
        if axes.log_y:
            fig.update_yaxes(type="log", row=row, col=1)
    fig.update_layout(
        height=230 * len(panels) + 80,
        margin=dict(l=10, r=170, t=60, b=40),
        title=title,
        uirevision=f"{title}/{axes.xaxis}/{axes.log_y}",
    )
    for row in range(1, len(panels) + 1):  # one legend beside each panel
        key = "yaxis" if row == 1 else f"yaxis{row}"
        top = fig.layout[key].domain[1]
        fig.layout["legend" if row == 1 else f"legend{row}"] = dict(
            x=1.01, y=top, xanchor="left", yanchor="top", font=dict(size=10)
        )
    fig.update_xaxes(title_text=X_TITLES.get(axes.xaxis, "step"), row=len(panels), col=1)
    return fit_constant_axes(fig)


def _global(frame: pd.DataFrame, layer: str) -> pd.DataFrame:
    """Rows of ``layer`` ("" = the whole model); tables without a layer column pass through."""
    if frame.empty or "layer" not in frame:
        return frame
    return frame[frame["layer"].fillna("") == layer]


def _time(frame: pd.DataFrame) -> list[str]:
    return ["time"] if "time" in frame else []


def _grid(
    frame: pd.DataFrame, metric: str, slice_name: str | None
) -> tuple[str, pd.DataFrame] | None:
    slices = [s for s, dim in landscape_slices(frame).items() if dim == 2]
    if slice_name is not None:
        slices = [s for s in slices if s == slice_name]
    if not slices:
        return None
    part = frame[(frame["slice"] == slices[0]) & (frame["metric"] == metric)]
    part = part.dropna(subset=["alpha", "beta"])
    if part.empty:
        return None
    grid = part.pivot_table(index="beta", columns="alpha", values="value", aggfunc="last")
    return slices[0], grid


def _style(fig: go.Figure, title: str, x_title: str, log_y: bool) -> None:
    fig.update_layout(
        title=title,
        height=320,
        margin=dict(l=10, r=10, t=40, b=40),
        xaxis_title=x_title,
        yaxis_type="log" if log_y else "linear",
        legend=dict(orientation="h", y=-0.25),
    )
