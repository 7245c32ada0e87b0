"""Callback bodies as plain functions on the sample and crafted runs (no browser)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from gradlens.dashboard.app import create_app, needs_refresh, render
from gradlens.dashboard.pages import collapse, compare, curvature, landscape, run, runs
from tests.dashboard.craft import craft_layer_run


@pytest.fixture(scope="module")
def ctx(dash_runs):
    return create_app(dash_runs).server.config["GRADLENS_CONTEXT"]


def _names(fig):
    return [t.name for t in fig.data]


def test_run_curves_mark_spikes_and_nonfinite_steps(ctx):
    loss, grad, lr = run.curves(ctx, "mlp-spiky", 0.6, "step", [])
    spikes = next(t for t in loss.data if t.name == "spike")
    assert sorted(spikes.x) == [151, 152, 153, 154, 155]
    assert "spike" in _names(grad) and _names(lr) == ["group 0"]
    loss, grad, _ = run.curves(ctx, "mlp-diverged", 0.0, "time", ["log"])
    bad = next(t for t in loss.data if t.name == "non-finite")
    assert min(np.asarray(bad.customdata)[:, 0]) == 12 and loss.layout.yaxis.type == "log"
    assert "non-finite" in _names(grad)


def test_heatmap_zoom_rebuckets_and_click_selects_a_layer(ctx):
    full = run.heatmap(ctx, "tiny-gpt", "grad_norm", None).data[0]
    assert len(full.y) == 29 and len(full.x) == 200
    zoom = run.heatmap(ctx, "tiny-gpt", "grad_norm", {"xaxis.range[0]": 50, "xaxis.range[1]": 80})
    assert list(zoom.data[0].x) == list(range(50, 81))
    back = run.heatmap(ctx, "tiny-gpt", "grad_norm", {"xaxis.autorange": True})
    assert len(back.data[0].x) == 200
    click = {"points": [{"x": 10, "y": "blocks.1.qkv.weight", "z": 0.1}]}
    assert run.clicked_layer(ctx, "tiny-gpt", click) == "blocks.1.qkv.weight"
    assert run.clicked_layer(ctx, "tiny-gpt", {"points": [{"y": "../../x"}]}) is None
    fig = run.layer_curves(ctx, "tiny-gpt", "blocks.1.qkv.weight", 0.0, "step", ["log"])
    assert len(fig.data) == 3 and all(len(t.x) == 200 for t in fig.data)


def test_x_range_from_relayout_events():
    assert run.x_range(None) == (None, None)
    assert run.x_range({"xaxis.range": [1.5, 9]}) == (1.5, 9.0)
    assert run.x_range({"autosize": True}) == (None, None)


def test_findings_arrive_from_the_background(ctx):
    deadline = time.monotonic() + 20
    while "computing" in str(page := run.findings(ctx, "mlp-diverged")):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert "nonfinite" in str(page) and "error" in str(page)
    rows = runs.runs_rows(ctx, [ctx.run("mlp-diverged")])
    assert "error" in rows[0][-1]


def test_probe_pages(ctx):
    eig, sharp, trace = curvature.curves(ctx, "probes", 0.6, "step", [])
    assert _names(eig)[:3] == ["λ1", "λ2", "λ3"] and "2 / lr" in _names(sharp)
    assert len(trace.data[0].x) == 10
    density = curvature.density(ctx, "probes", 40)
    assert len(density.data) == 2 and "step 40" in density.layout.title.text
    one, contour, surface, summary = landscape.slices(ctx, "probes", 100, "loss")
    assert np.array(contour.data[0].z).shape == np.array(surface.data[0].z).shape == (11, 11)
    assert "roughness" in str(summary)
    one, contour, _, _ = landscape.slices(ctx, "probes", 199, "accuracy")
    assert one.data[0].y[10] == pytest.approx(1.0)  # accuracy at alpha = 0
    assert "no 2-D" in contour.layout.annotations[0].text  # the 2-D slice has loss only
    nc, soft = collapse.curves(ctx, "probes", 0, "step", ["log"])
    assert "nc1" in _names(nc) and "log_z_mean" in _names(soft)


@pytest.mark.parametrize("page", ["curvature", "landscape", "collapse"])
def test_probe_pages_without_data_say_so(ctx, page):
    text = str(render(ctx, f"/{page}/layered"))  # crafted: no probe or softmax table
    assert "data in this run" in text and "graph" not in text


def test_compare_overlays_runs(ctx):
    options, layers = compare.metric_options(ctx, ["mlp", "probes"])
    values = [o["value"] for o in options]
    assert "scalars|loss" in values and "hessian|top_eigenvalue" in values
    assert "body.0.weight" in layers
    fig = compare.figure(ctx, ["mlp", "mlp-spiky"], "scalars|loss", None, 0.6, "wall", [])
    assert [t.name for t in fig.data if t.showlegend is not False] == ["mlp", "mlp-spiky"]
    fig = compare.figure(
        ctx, ["mlp-spiky", "probes"], "hessian|top_eigenvalue", None, 0, "step", []
    )
    assert _names(fig) == ["probes"]
    fig = compare.figure(
        ctx, ["mlp", "mlp-spiky"], "layers|grad_norm", "body.0.weight", 0, "step", []
    )
    assert len(fig.data) == 2


def test_refresh_runs_only_while_something_changes(ctx, tmp_path):
    deadline = time.monotonic() + 20
    while needs_refresh(ctx, "/run/mlp"):  # until its report is built
        assert time.monotonic() < deadline
        time.sleep(0.1)
    live = create_app(tmp_path).server.config["GRADLENS_CONTEXT"]
    craft_layer_run(tmp_path, "live", status="running", steps=30)  # this process: alive
    assert needs_refresh(live, "/run/live") and needs_refresh(live, "/")
    assert "running" in str(render(live, "/run/live"))


def test_big_runs_are_reported_on_request_only(dash_runs):
    ctx = create_app(dash_runs).server.config["GRADLENS_CONTEXT"]
    ctx.findings.auto_rows = 100  # every run is "big" now
    assert "not built automatically" in str(run.findings(ctx, "mlp"))
    assert "open the run" in runs.runs_rows(ctx, [ctx.run("mlp")])[0][-1]
    assert "display" not in str(render(ctx, "/run/mlp").children[-1].style)  # the button
    deadline = time.monotonic() + 20
    while "loss_spikes" not in str(page := run.findings(ctx, "mlp-spiky", build=True)):
        assert "not built" not in str(page)
        assert time.monotonic() < deadline
        time.sleep(0.1)
