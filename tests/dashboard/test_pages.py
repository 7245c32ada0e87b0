"""Callback bodies as plain functions on the sample and crafted runs (no browser)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from gradlens.dashboard.app import create_app, needs_refresh, render
from gradlens.dashboard.pages import collapse, compare, curvature, landscape, run, runs
from gradlens.store import RunWriter
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
    assert len(fig.data) == 3
    # ‖g‖ every step; ‖θ‖ and ‖Δθ‖ on the sampled steps: every 10th (0, 10, …, 190) and the
    # steps a Hessian probe follows (49, 99, 149, 199: it needs their Δθ)
    lengths = sorted(len(t.x) for t in fig.data)
    assert lengths == [24, 24, 200], lengths


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


def _chart_keys(charts):
    return [c.children[0].id["key"] for c in charts if getattr(c, "className", "") == "chart"]


def test_compare_grid_sections_filter_and_unknown_runs(ctx):
    charts, notes = compare.grid(
        ctx, ["mlp", "probes"], ["training", "curvature"], None, None, 0.6, "step", []
    )
    keys = _chart_keys(charts)
    assert keys[:2] == ["scalars|loss", "scalars|grad_norm"]  # training first, loss first
    assert "hessian|top_eigenvalue" in keys and "scalars|time" not in keys  # internals hidden
    assert not any(k.startswith("collapse") for k in keys)
    charts, _ = compare.grid(ctx, ["mlp"], ["training"], "^lo", None, 0, "step", [])
    assert _chart_keys(charts) == ["scalars|loss"]
    _, notes = compare.grid(ctx, ["mlp"], ["training"], "(", None, 0, "step", [])
    assert "regular expression" in str(notes)
    assert compare.unknown_runs(ctx, "?runs=mlp,nope,..%2Fx") == ["nope", "../x"]
    colours = compare.run_colours(ctx.catalog.names())
    fig = compare.figure(ctx, ["mlp", "mlp-spiky"], "scalars|loss", None, 0.0, "step", [])
    assert {t.name: t.line.color for t in fig.data} == {
        "mlp": colours["mlp"],
        "mlp-spiky": colours["mlp-spiky"],
    }


def test_config_diff_lists_only_what_differs(ctx):
    text = str(compare.config_diff(ctx, ["grokking", "grokking-wd"]))
    assert "argv" in text and "weight" in text
    assert "versions.python" not in text  # the same in both
    assert "two or more" in str(compare.config_diff(ctx, ["mlp"]))


def test_run_page_view_round_trips_through_the_url(ctx):
    search = run.view_search(
        "body.0.bias", "param_norm", "value", 0.3, "time", ["log"], [], [10.0, 50.0]
    )
    page = str(render(ctx, "/run/layered", search))
    for expected in (
        "value='body.0.bias'",
        "value='param_norm'",
        "value='value'",
        "value=0.3",
        "value='time'",
        "value=['log']",
        "data=[10.0, 50.0]",
    ):
        assert expected in page, expected
    assert "value=[]" in page  # shade findings off
    default = str(render(ctx, "/run/layered"))
    assert "value=0.6" in default and "data=[10.0, 50.0]" not in default


def test_a_finding_targets_its_layer_and_steps(ctx):
    rows = [{"start": 120, "end": 130, "layer": "body.0.weight"}, {"start": None, "layer": "x"}]
    layer, xr = run.finding_target(ctx, "layered", rows, 0, "step")
    assert layer == "body.0.weight" and xr[0] < 120 and 130 < xr[1] < 140
    assert run.finding_target(ctx, "layered", rows, 1, "step") == (None, None)
    _, seconds = run.finding_target(ctx, "layered", rows, 0, "time")
    assert seconds[0] == pytest.approx((120 - 5) * 0.05)  # the crafted clock: 0.05 s a step
    assert run.finding_target(ctx, "layered", rows, 7, "step") == (None, None)


def test_heatmap_follows_the_x_axis_mode_and_colours_by_baseline(ctx):
    fig = run.heatmap(ctx, "layered", "grad_norm", [100.0, 140.0], "relative", "step")
    heat = fig.data[0]
    assert min(heat.x) >= 99 and max(heat.x) <= 141
    z = np.asarray(heat.z, dtype=float)
    row, col = np.unravel_index(np.nanargmax(z), z.shape)
    assert heat.y[row] == "body.0.weight" and heat.x[col] == 120  # the 40x spike
    timed = run.heatmap(ctx, "layered", "grad_norm", [5.0, 7.0], "value", "time")
    assert min(timed.data[0].x) >= 4.9 and max(timed.data[0].x) <= 7.1  # seconds
    assert run.default_colour(ctx.data("mlp-spiky")) == "relative"


def test_runs_table_filters_and_sorts(ctx):
    text = str(runs.runs_table(ctx, "^mlp-"))
    assert "mlp-spiky" in text and "grokking" not in text
    assert "regular expression" in str(runs.runs_table(ctx, "("))
    rows = runs.runs_rows(ctx, [ctx.run(n) for n in ("mlp", "tiny-gpt")], sort="steps")
    assert [r[3] for r in rows] == ["300", "200"]


def test_run_header_has_health_config_and_learning_rates(ctx):
    deadline = time.monotonic() + 20
    while "unhealthy" not in str(header := run.header(ctx, "mlp-diverged")):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert "status finished unhealthy" in str(header)
    text = str(run.header(ctx, "grokking"))
    assert "lr (group 0)" in text and "0.01" in text and "argv" in text and "spikes.beta" in text


def test_probe_page_axes_round_trip_through_the_url(ctx):
    from gradlens.dashboard.components import axes_search

    search = axes_search("time", ["outliers"])
    page = str(render(ctx, "/collapse/probes", search))
    assert "value='time'" in page and "value=['outliers']" in page  # log y off, as asked
    assert "value=['log']" in str(render(ctx, "/collapse/probes"))  # the page's default
    assert "smoothing" not in page  # probes are never smoothed: no slider


def test_findings_are_shaded_over_their_steps(ctx):
    deadline = time.monotonic() + 20
    while not (shapes := run.curves(ctx, "mlp-spiky", 0.6, "step", [])[0].layout.shapes):
        assert time.monotonic() < deadline  # until the report is built
        time.sleep(0.1)
    assert all(s.xref == "x" and s.yref == "paper" and s.x0 < s.x1 for s in shapes)
    assert any(s.x0 <= 151 <= s.x1 for s in shapes)  # the loss spikes at 151–155
    plain = run.curves(ctx, "mlp-spiky", 0.6, "step", [], shade=False)[0]
    assert not plain.layout.shapes


def test_a_wall_clock_zoom_survives_the_url(ctx):
    zoom = ["2023-11-14 22:13:25", "2023-11-14 22:13:30"]
    search = run.view_search(None, None, None, 0.6, "wall", [], ["on"], zoom)
    assert f"data={zoom}" in str(render(ctx, "/run/layered", search))
    bad = run.view_search(None, None, None, 0.6, "wall", [], ["on"], ["later", "soon"])
    assert "later" not in str(render(ctx, "/run/layered", bad))


def test_compare_names_metrics_without_data_instead_of_drawing_blank_charts(ctx):
    grokking = ["grokking", "grokking-wd"]
    empty = compare.figure(ctx, grokking, "hessian|fd_check_error", None, 0, "step", [])
    assert not empty.data  # recorded per HVP engine only: no whole-model series
    charts, _ = compare.grid(ctx, grokking, ["internals"], "fd_check", None, 0, "step", [])
    assert _chart_keys(charts) == ["hessian|fd_check_passed"]
    assert "no data in the chosen runs: fd_check_error" in str(charts)
    charts, _ = compare.grid(ctx, grokking, ["layers"], None, None, 0, "step", [])
    assert _chart_keys(charts) == [] and "choose a layer" in str(charts)
    keys = _chart_keys(compare.grid(ctx, grokking, ["curvature"], None, None, 0, "step", [])[0])
    assert "hessian|top_eigenvalue" in keys  # convergence checks and the lr copy: internals
    assert not {"hessian|trace_stderr", "hessian|fd_check_passed", "hessian|lr"} & set(keys)


def test_compare_layout_picks_the_layer_so_the_grid_waits_for_no_callback(ctx):
    page = str(render(ctx, "/compare", "?runs=layered"))
    assert "options=['embed.weight', 'body.0.weight', 'body.0.bias', 'head.weight']" in page
    assert "value='embed.weight'" in page  # the first layer until one is chosen
    chosen = str(render(ctx, "/compare", "?runs=layered&layer=head.weight"))
    assert "value='head.weight'" in chosen


def test_grid_charts_are_laid_out_once_in_the_browser(ctx):
    """Fixed margins and no axis automargin: plotly_white's automargin made the browser
    measure every tick label and redraw a chart whose labels pushed a margin."""
    fig = compare.grid_chart(ctx, ["mlp", "mlp-spiky"], "scalars|loss", None, 0.6, "step", [])
    assert fig.layout.margin.autoexpand is False and fig.layout.margin.l >= 60
    assert fig.layout.xaxis.automargin is False and fig.layout.yaxis.automargin is False
    assert fig.layout.showlegend is False  # the sidebar's swatches name the runs' colours
    loss, _, _ = run.curves(ctx, "layered", 0.6, "step", [])
    layer = run.layer_curves(ctx, "layered", "body.0.weight", 0.6, "step", [])
    for chart in (loss, layer):
        axes = [k for k in chart.layout if k[1:5] == "axis" and k[0] in "xy"]
        assert len(axes) >= 2 and all(chart.layout[k].automargin is False for k in axes)


def test_compare_charts_are_cached_until_a_run_changes(tmp_path):
    for name in ("a", "b"):
        craft_layer_run(tmp_path, name)
    live = create_app(tmp_path).server.config["GRADLENS_CONTEXT"]
    args = (["a", "b"], "scalars|loss", None, 0.6, "step", [])
    first = compare.grid_chart(live, *args)
    assert compare.grid_chart(live, *args) is first  # a revisit builds nothing
    assert compare.grid_chart(live, ["a", "b"], "scalars|loss", None, 0.0, "step", []) is not first
    writer = RunWriter(tmp_path / "a")
    writer.write("scalars", {"step": [200], "metric": ["loss"], "index": [0], "value": [9.0]})
    writer.close(compact=False)
    again = compare.grid_chart(live, *args)
    assert again is not first  # a new segment: drawn again, with the new point
    line = next(t for t in again.data if t.name == "a")
    assert line.customdata[-1].tolist()[:2] == [9.0, 200]
