"""Probe figures from the crafted probe run's tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gradlens.dashboard.figures_probes import (
    collapse_figure,
    density_figure,
    eigenvalues_figure,
    landscape_1d_figure,
    landscape_contour_figure,
    landscape_slices,
    landscape_surface_figure,
    sharpness_figure,
    softmax_figure,
    trace_figure,
)
from gradlens.store import open_run


@pytest.fixture(scope="module")
def probes(dash_runs):
    return open_run(dash_runs / "probes")


def test_top_k_eigenvalues_one_line_per_k(probes):
    fig = eigenvalues_figure(probes.table("hessian"))
    assert [t.name for t in fig.data] == ["λ1", "λ2", "λ3", "λmin"]
    assert list(fig.data[0].y) == [10.0 + s / 10 for s in range(0, 200, 20)]


def test_sharpness_against_two_over_lr(probes):
    lr = pd.DataFrame({"step": np.arange(200), "value": np.full(200, 0.1)})
    fig = sharpness_figure(probes.table("hessian"), lr)
    edge = next(t for t in fig.data if t.name == "2 / lr")
    assert np.allclose(edge.y, 20.0)
    assert next(t for t in fig.data if t.name.startswith("sharpness")).y[-1] == 10 + 180 / 10


def test_trace_has_error_bars(probes):
    (trace,) = trace_figure(probes.table("hessian")).data
    assert list(trace.error_y.array) == [2.0] * 10


def test_density_at_a_step_on_log_scale(probes):
    fig = density_figure(probes.table("spectrum"), 40)
    assert fig.layout.yaxis.type == "log"
    density, nodes = fig.data
    assert len(density.x) == 64 and len(nodes.x) == 8
    assert (
        "no spectral density"
        in density_figure(probes.table("spectrum"), 7).layout.annotations[0].text
    )


def test_landscape_views(probes):
    rows = probes.table("landscape")
    at = rows[rows["step"] == 199]
    assert landscape_slices(at) == {"update-1d": 1, "filter-2d": 2, "hessian-2d": 2}
    line = landscape_1d_figure(at, "loss").data[0]
    assert len(line.x) == 21 and min(line.y) == pytest.approx(1.0)
    contour = landscape_contour_figure(at).data[0]
    z = np.array(contour.z)
    assert z.shape == (11, 11) and z.min() == pytest.approx(1.0)
    assert z[0, 5] == pytest.approx(3.0)  # beta = -1, alpha = 0
    surface = landscape_surface_figure(at, "loss", "hessian-2d").data[0]
    assert np.array(surface.z).min() == pytest.approx(5.0)  # the chosen slice, not the first
    assert "no 2-D accuracy" in landscape_contour_figure(at, "accuracy").layout.annotations[0].text


def test_collapse_and_softmax(probes):
    nc = collapse_figure(
        probes.table("collapse"),
    )
    assert {t.name for t in nc.data} >= {"nc1", "cdnv", "nc4"}
    soft = softmax_figure(probes.table("softmax"))
    names = [t.name for t in soft.data]
    assert names == ["saturated_fraction", "zero_loss_fraction", "max_logit_gap", "log_z_mean"]
    assert len(soft.layout.annotations) == 3  # three panels


def test_missing_probe_rows_give_messages():
    empty = pd.DataFrame(columns=["step", "metric", "layer", "index", "value"])
    assert "no top_eigenvalue" in eigenvalues_figure(empty).layout.annotations[0].text
    assert "no softmax" in softmax_figure(empty).layout.annotations[0].text


def _hessian(values: list[float], metric: str = "sharpness") -> pd.DataFrame:
    steps = [499, 999, 1499, 1999][: len(values)]
    return pd.DataFrame({"step": steps, "metric": metric, "layer": "", "index": 0, "value": values})


def test_sharpness_axis_is_clipped_to_lambda_max_when_two_over_lr_is_far_above():
    lr = pd.DataFrame({"step": np.arange(2000), "value": np.full(2000, 1.5e-4)})  # 2/lr ≈ 13k
    fig = sharpness_figure(_hessian([0.5, 2.0, 4.0, 8.0]), lr)
    lo, hi = fig.layout.yaxis.range
    assert fig.layout.yaxis.type == "log"
    assert lo < np.log10(0.5) and np.log10(8.0) < hi < np.log10(13_000)
    assert "above the chart" in fig.layout.annotations[-1].text
    near = sharpness_figure(_hessian([5.0, 10.0, 15.0]), lr.assign(value=0.1))  # edge = 20
    assert near.layout.yaxis.range[1] > np.log10(20.0)  # the edge is shown when near


def test_lambda_min_at_or_below_zero_is_left_out_of_a_log_axis_and_says_so():
    from gradlens.dashboard.figures import Axes

    rows = pd.concat([_hessian([1.0, 2.0], "top_eigenvalue"), _hessian([-0.5, 0.0], "lambda_min")])
    fig = eigenvalues_figure(rows, Axes(log_y=True))
    assert [t.name for t in fig.data] == ["λ1"]
    assert any("λmin ≤ 0" in a.text for a in fig.layout.annotations)
    assert [t.name for t in eigenvalues_figure(rows).data] == ["λ1", "λmin"]


def test_density_axes_are_clipped_to_its_support(probes):
    spectrum = probes.table("spectrum")
    rows = spectrum[spectrum["step"] == 40].copy()
    rows.loc[rows["kind"] == "density", "value"] *= 1e-40  # far tails as small as 1e-45
    rows.loc[rows.index[:3], "value"] = 1.0
    fig = density_figure(rows, 40)
    lo, hi = fig.layout.yaxis.range
    assert hi - lo <= 6.5 and hi > 0


def test_collapse_panels_by_family_without_counts():
    from gradlens.dashboard.figures import Axes

    metrics = ["nc1", "cdnv", "nc2_equinorm", "nc3", "nc4", "num_classes"]
    frame = pd.DataFrame(
        [(s, m, 0.5 + i) for s in (100, 200, 300) for i, m in enumerate(metrics)],
        columns=["step", "metric", "value"],
    )
    fig = collapse_figure(frame, Axes(log_y=True))
    names = {t.name for t in fig.data}
    assert "num_classes" not in names and {"nc1", "cdnv", "nc4"} <= names
    titles = [a.text for a in fig.layout.annotations if not a.text.startswith("constant")]
    assert [t.split(":")[0] for t in titles] == ["NC1", "NC2", "NC3", "NC4"]
    assert all(fig.layout[f"yaxis{i if i > 1 else ''}"].type == "log" for i in range(1, 5))
    single = collapse_figure(frame[frame["step"] == 300])
    point = next(t for t in single.data if t.name == "nc1")
    assert point.mode == "markers+text" and point.text == ("0.5",)
