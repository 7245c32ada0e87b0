"""Sampled metrics (‖θ‖, ‖Δθ‖, ‖Δθ‖/‖θ‖ every ``param_every`` steps, softmax signals every
``softmax_every``): each chart that draws one says so and marks its points; a run recorded
before sampling (the crafted ones: no schedule in their config) says nothing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gradlens.dashboard.app import create_app
from gradlens.dashboard.figures import (
    SPARSE_MARKERS,
    Axes,
    compare_figure,
    heatmap_figure,
    layer_figure,
    lines_figure,
)
from gradlens.dashboard.figures_probes import softmax_figure
from gradlens.dashboard.pages import collapse, compare, run


@pytest.fixture(scope="module")
def ctx(dash_runs):
    return create_app(dash_runs).server.config["GRADLENS_CONTEXT"]


def _titles(fig):
    return [a.text for a in fig.layout.annotations]


def _layer_curves(sampled_every=10, steps=200):
    dense = np.arange(steps)
    sparse = np.arange(0, steps, sampled_every)
    return pd.concat(
        [
            pd.DataFrame({"step": dense, "metric": "grad_norm", "value": 1.0 + 0.1 * dense % 3}),
            pd.DataFrame({"step": sparse, "metric": "update_ratio", "value": 1e-3 + 0 * sparse}),
            pd.DataFrame({"step": sparse, "metric": "param_norm", "value": 5.0 + sparse}),
        ]
    )


# -- figures -------------------------------------------------------------------------------------


def test_layer_figure_titles_and_marks_the_sampled_rows():
    sampling = {"param_norm": 10, "update_norm": 10, "update_ratio": 10}
    fig = layer_figure(_layer_curves(), "w", axes=Axes(smoothing=0.6), sampling=sampling)
    assert _titles(fig)[:3] == [
        "grad_norm",
        "update_ratio (every 10 steps)",
        "param_norm (every 10 steps)",
    ]
    by_row = {t.yaxis: t for t in fig.data if t.hoverinfo != "skip"}
    assert by_row["y"].mode == "lines"  # ‖g‖ every step: a smoothed line
    for axis in ("y2", "y3"):  # 20 points, 10 steps apart: each one marked, none smoothed
        assert by_row[axis].mode == "lines+markers" and len(by_row[axis].x) == 20
    assert len([t for t in fig.data if t.yaxis == "y3"]) == 1  # no faint raw curve behind
    assert by_row["y2"].hovertemplate.startswith("update_ratio (every 10 steps): ")
    assert by_row["y"].hovertemplate.startswith("grad_norm: ")
    plain = layer_figure(_layer_curves(), "w")
    assert _titles(plain)[:3] == ["grad_norm", "update_ratio", "param_norm"]


def test_a_long_sampled_series_marks_its_points_until_they_blur():
    few = pd.DataFrame({"step": np.arange(0, 2200, 10), "value": np.linspace(1, 2, 220)})
    (line,) = lines_figure(few, "param_norm").data
    assert line.mode == "lines+markers"
    many = np.arange(0, 20 * SPARSE_MARKERS, 10)  # a long run: its line is a blur of markers
    frame = pd.DataFrame({"step": many, "value": np.sin(many / 300.0)})
    (line,) = lines_figure(frame, "param_norm").data
    assert len(line.x) > SPARSE_MARKERS and line.mode == "lines"


def test_heatmap_and_softmax_titles_say_the_schedule():
    cells = pd.DataFrame([[1e-3, 2e-3]], index=["w"], columns=[0, 10])
    assert "update_ratio (every 10 steps; max per step bucket" in (
        heatmap_figure(cells, "update_ratio", every=10).layout.title.text
    )
    relative = heatmap_figure(cells, "update_ratio", relative=cells, every=10)
    assert "baseline (every 10 steps) — click" in relative.layout.title.text
    assert "every" not in heatmap_figure(cells, "update_ratio").layout.title.text
    rows = pd.DataFrame(
        {"step": [0, 20, 40], "metric": "saturated_fraction", "layer": "", "value": [0, 0.1, 0.3]}
    )
    assert softmax_figure(rows, every=20).layout.title.text == "softmax collapse (every 20 steps)"
    assert softmax_figure(rows).layout.title.text == "softmax collapse"


def test_compare_figure_titles_by_the_runs_schedules_and_hover_names_each():
    frame = pd.concat(
        [
            pd.DataFrame({"step": np.arange(0, 100, 10), "value": 1.0, "series": "new"}),
            pd.DataFrame({"step": np.arange(100), "value": 2.0, "series": "old"}),
        ]
    )
    new = frame[frame["series"] == "new"]
    assert compare_figure(new, "param_norm", every={"new": 10}).layout.title.text == (
        "param_norm (every 10 steps)"
    )
    mixed = compare_figure(frame, "param_norm", every={"new": 10, "old": 1})
    assert mixed.layout.title.text == "param_norm (every 10 steps in some runs)"
    hover = {t.name: t.hovertemplate for t in mixed.data}
    assert hover["new"].startswith("new (every 10 steps): ")
    assert hover["old"].startswith("old: ")
    two = frame.assign(series=frame["series"].map({"new": "a", "old": "b"}))
    assert compare_figure(two, "x", every={"a": 10, "b": 20}).layout.title.text == (
        "x (every 10, 20 steps, by run)"
    )
    assert compare_figure(frame, "loss").layout.title.text == "loss"


# -- pages on the recorded sample runs (param_every 10, softmax_every 20) ------------------------


def test_run_page_layer_curves_and_heatmap_of_a_recorded_run(ctx):
    fig = run.layer_curves(ctx, "grokking", "head.weight", 0.6, "step", [])
    assert _titles(fig)[:3] == [
        "grad_norm",
        "update_ratio (every 10 steps)",
        "param_norm (every 10 steps)",
    ]
    sampled = [t for t in fig.data if t.yaxis == "y2"]
    assert [t.mode for t in sampled] == ["lines+markers"]
    assert "every 10 steps" in run.heatmap(ctx, "grokking", "param_norm", None).layout.title.text
    assert "every" not in run.heatmap(ctx, "grokking", "grad_norm", None).layout.title.text


def test_a_run_recorded_every_step_says_nothing(ctx):
    fig = run.layer_curves(ctx, "layered", "head.weight", 0.0, "step", [])
    assert _titles(fig)[:3] == ["grad_norm", "update_ratio", "param_norm"]
    assert "every" not in run.heatmap(ctx, "layered", "update_ratio", None).layout.title.text
    assert ctx.data("layered").sampling() == {}


def test_collapse_page_softmax_chart_of_a_recorded_run(ctx):
    _, soft = collapse.curves(ctx, "grokking", 0.0, "step", [])
    assert soft.layout.title.text == "softmax collapse (every 20 steps)"


def test_compare_page_names_the_sampled_runs(ctx):
    fig = compare.figure(
        ctx, ["grokking", "grokking-wd"], "layers|update_ratio", "head.weight", 0.0, "step", []
    )
    assert fig.layout.title.text == "update_ratio of head.weight (every 10 steps)"
    mixed = compare.figure(
        ctx, ["grokking", "layered"], "layers|param_norm", "head.weight", 0.0, "step", []
    )
    assert mixed.layout.title.text == "param_norm of head.weight (every 10 steps in some runs)"
    soft = compare.figure(ctx, ["grokking"], "softmax|saturated_fraction", None, 0, "step", [])
    assert soft.layout.title.text == "saturated_fraction (every 20 steps)"
    loss = compare.figure(ctx, ["grokking", "layered"], "scalars|loss", None, 0.0, "step", [])
    assert loss.layout.title.text == "loss"
