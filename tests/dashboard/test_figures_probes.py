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
