"""Probe figures (curvature, landscape, collapse): pure functions from the probe tables.

Frames are the tables as ``gradlens.store.schema`` documents them (long format). Probes run
on sparse schedules, so their curves are drawn with markers. Nothing here reads files.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from gradlens.dashboard.figures import DEFAULT_AXES, PALETTE, Axes, empty_figure, lines_figure

__all__ = [
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
    if not low.empty:
        frame = pd.concat([frame, low.assign(series="λmin")], ignore_index=True)
    return lines_figure(frame[["step", "value", "series", *_time(frame)]], "top eigenvalues", axes)


def sharpness_figure(
    hessian: pd.DataFrame, lr: pd.DataFrame, axes: Axes = DEFAULT_AXES
) -> go.Figure:
    """Sharpness (λmax) against the edge of stability 2/lr (Cohen et al. 2021)."""
    rows = _global(hessian, "")
    sharp = rows[rows["metric"] == "sharpness"] if not rows.empty else rows
    if sharp.empty and not rows.empty:
        sharp = rows[(rows["metric"] == "top_eigenvalue") & (rows["index"] == 0)]
    if sharp.empty:
        return empty_figure("no sharpness in the hessian table")
    parts = [sharp.assign(series="sharpness λmax")]
    if not lr.empty:
        edge = lr[lr["value"] > 0]
        parts.append(edge.assign(value=2.0 / edge["value"], series="2 / lr"))
    frame = pd.concat(parts, ignore_index=True)
    return lines_figure(
        frame[["step", "value", "series", *_time(frame)]], "sharpness vs 2/lr", axes
    )


def trace_figure(hessian: pd.DataFrame, axes: Axes = DEFAULT_AXES) -> go.Figure:
    """Hessian trace over steps with its Hutchinson standard error as error bars."""
    rows = _global(hessian, "")
    trace = rows[rows["metric"] == "trace"].sort_values("step") if not rows.empty else rows
    if trace.empty:
        return empty_figure("no trace in the hessian table")
    err = rows[rows["metric"] == "trace_stderr"].set_index("step")["value"]
    fig = go.Figure(
        go.Scatter(
            x=trace["step"],
            y=trace["value"],
            mode="lines+markers",
            name="trace",
            line=dict(color=PALETTE[0]),
            error_y=dict(type="data", array=err.reindex(trace["step"]).to_numpy(), visible=True),
        )
    )
    _style(fig, "Hessian trace", "step", axes.log_y)
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
                name=name,
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
    _style(fig, f"{name}: {metric} contour", "alpha", log_y=False)
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
        title=f"{name}: {metric} surface",
        height=480,
        margin=dict(l=10, r=10, t=40, b=10),
        scene=dict(xaxis_title="alpha", yaxis_title="beta", zaxis_title=metric),
    )
    return fig


def collapse_figure(collapse: pd.DataFrame, axes: Axes = DEFAULT_AXES) -> go.Figure:
    """Neural-collapse metrics over steps (NC1, CDNV, NC2, NC3, NC4), one line each."""
    if collapse.empty:
        return empty_figure("no neural-collapse data")
    frame = collapse.assign(series=collapse["metric"])
    return lines_figure(frame[["step", "value", "series", *_time(frame)]], "neural collapse", axes)


def softmax_figure(softmax: pd.DataFrame, axes: Axes = DEFAULT_AXES) -> go.Figure:
    """Softmax-collapse signals stacked: saturated fraction, logit gap, log Z."""
    rows = _global(softmax, "")
    panels = [
        (title, [m for m in names if not rows.empty and (rows["metric"] == m).any()])
        for title, names in SOFTMAX_PANELS
    ]
    panels = [(t, names) for t, names in panels if names]
    if not panels:
        return empty_figure("no softmax-collapse data")
    fig = make_subplots(
        rows=len(panels), cols=1, shared_xaxes=True, subplot_titles=[t for t, _ in panels]
    )
    for row, (_, names) in enumerate(panels, start=1):
        for i, metric in enumerate(names):
            part = rows[rows["metric"] == metric].sort_values("step")
            fig.add_trace(
                go.Scatter(
                    x=part["step"],
                    y=part["value"],
                    mode="lines+markers",
                    name=metric,
                    line=dict(color=PALETTE[(row + i) % len(PALETTE)]),
                ),
                row=row,
                col=1,
            )
    fig.update_layout(
        height=230 * len(panels) + 60,
        margin=dict(l=10, r=10, t=40, b=40),
        title="softmax collapse",
    )
    return fig


# -- helpers ---------------------------------------------------------------------------------


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
