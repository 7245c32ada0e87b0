"""Evaluation and logged-metric figures: pure functions from frames to plotly Figures.

Eval frames are long: ``step``, ``value``, ``series`` (the loader: ``loader 0``, ``loader 1``)
and ``time``. Evaluations are sparse, so their curves are drawn with markers and never
smoothed (``line_traces`` smooths dense series only). Nothing here reads files.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from gradlens.dashboard.figures import (
    DEFAULT_AXES,
    PALETTE,
    X_TITLES,
    Axes,
    empty_figure,
    escape,
    fit_constant_axes,
    line_traces,
    lines_figure,
)

__all__ = [
    "TRAIN_COLOUR",
    "USER_ROWS",
    "eval_accuracy_figure",
    "eval_loss_figure",
    "loader_label",
    "user_figure",
]

TRAIN_COLOUR = "#7f7f7f"
USER_ROWS = 6  # logged metrics drawn at once (one row each); the rest are named in the title


def loader_label(index: int, loaders: int) -> str:
    """``eval`` for a run with one loader, else ``loader 0``, ``loader 1``…"""
    return "eval" if loaders == 1 else f"loader {index}"


def eval_loss_figure(
    evals: pd.DataFrame, train: pd.DataFrame | None = None, axes: Axes = DEFAULT_AXES
) -> go.Figure:
    """Eval loss per loader; ``train`` (step, value, time) is the training loss at each
    evaluation (``gradlens.report.evaluation.train_loss_at``), drawn dashed: the vertical
    distance between the two is the generalization gap the report prints."""
    if evals.empty:
        return empty_figure("no evaluation in this run")
    fig = lines_figure(evals, "eval loss", axes)
    if train is not None and not train.empty:
        flat = replace(axes, smoothing=0.0)  # the median is smoothing enough
        for trace in line_traces(
            train, "train loss (median since the previous eval)", TRAIN_COLOUR, flat
        ):
            trace.line.dash = "dash"
            fig.add_trace(trace)
    fig.update_layout(showlegend=True, title="eval loss")  # the legend names loaders and train
    return fig


def eval_accuracy_figure(evals: pd.DataFrame, axes: Axes = DEFAULT_AXES) -> go.Figure:
    """Eval accuracy per loader, as a fraction on a 0–1 axis (never on a log axis)."""
    if evals.empty:
        return empty_figure("no eval accuracy in this run (not a classification loss)")
    linear = replace(axes, log_y=False)
    fig = lines_figure(evals, "eval accuracy", linear)
    fig.update_yaxes(tickformat=".0%")
    fig.update_layout(showlegend=True)
    return fig


def user_figure(frame: pd.DataFrame, axes: Axes = DEFAULT_AXES) -> go.Figure:
    """The script's own metrics (``gradlens.log``), one row per metric on a shared x axis.

    ``frame``: columns step, metric, value (and time). At most ``USER_ROWS`` metrics, in the
    order first logged; the title names how many more there are.
    """
    if frame.empty:
        return empty_figure("nothing logged with gradlens.log in this run")
    metrics = [str(m) for m in dict.fromkeys(frame["metric"])]
    shown = metrics[:USER_ROWS]
    fig = make_subplots(
        rows=len(shown),
        cols=1,
        shared_xaxes=True,
        subplot_titles=[escape(m) for m in shown],
        vertical_spacing=min(0.08, 0.5 / len(shown)),
    )
    for row, metric in enumerate(shown, start=1):
        part = frame[frame["metric"] == metric]
        colour = PALETTE[(row - 1) % len(PALETTE)]
        for trace in line_traces(part, metric, colour, axes):
            fig.add_trace(trace, row=row, col=1)
        if axes.log_y and bool(np.all(part["value"].to_numpy(dtype=float) > 0)):
            fig.update_yaxes(type="log", row=row, col=1)
    more = len(metrics) - len(shown)
    title = "logged by the script (gradlens.log)"
    if more:
        hidden = ", ".join(escape(m) for m in metrics[USER_ROWS:][:5])
        title += f" — {more} more not drawn: {hidden}" + (", …" if more > 5 else "")
    fig.update_layout(
        title=title,
        height=170 * len(shown) + 90,
        margin=dict(l=10, r=10, t=60, b=40),
        showlegend=False,
        uirevision=f"user/{axes.xaxis}/{axes.log_y}",
    )
    fig.update_xaxes(title_text=X_TITLES.get(axes.xaxis, "step"), row=len(shown), col=1)
    return fit_constant_axes(fig)
