"""Evaluation and logged-metric charts of the run and compare pages (no browser)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gradlens.dashboard.app import create_app, csv_text, render
from gradlens.dashboard.pages import compare, run
from gradlens.report.evaluation import train_loss_at
from tests.dashboard.craft import EVAL_STEPS, craft_eval_run, eval_curves
from tests.report.craft import craft_run, decreasing_loss, eval_rows


@pytest.fixture(scope="module")
def ctx(dash_runs):
    return create_app(dash_runs).server.config["GRADLENS_CONTEXT"]


def _trace(fig, name):
    return next(t for t in fig.data if t.name == name)


def test_eval_loss_per_loader_with_the_train_loss_at_each_evaluation(ctx):
    loss, accuracy, user = run.evaluation(ctx, "evaluated", 0.6, "step", [])
    curves = eval_curves()
    val, test = _trace(loss, "loader 0"), _trace(loss, "loader 1")
    assert list(val.x) == EVAL_STEPS and list(test.x) == EVAL_STEPS  # sparse: never smoothed
    np.testing.assert_allclose(val.y, curves["val_loss"])
    np.testing.assert_allclose(test.y, curves["test_loss"])
    train = _trace(loss, "train loss (median since the previous eval)")
    expected = train_loss_at(pd.Series(decreasing_loss(200)), np.array(EVAL_STEPS))
    np.testing.assert_allclose(train.y, expected, rtol=1e-6)  # the report's definition
    assert train.line.dash == "dash"
    np.testing.assert_allclose(_trace(accuracy, "loader 0").y, curves["val_accuracy"])
    np.testing.assert_allclose(_trace(accuracy, "loader 1").y, curves["test_accuracy"])
    assert accuracy.layout.yaxis.tickformat == ".0%"
    titles = [a.text for a in user.layout.annotations]
    assert titles == ["val/acc", "bleu"]
    bleu = next(t for t in user.data if t.yaxis == "y2")
    assert list(bleu.x) == EVAL_STEPS[::2]
    np.testing.assert_allclose(bleu.y, [10.0 + s / 20 for s in EVAL_STEPS[::2]])


def test_eval_charts_share_the_run_pages_x_axis(ctx):
    curves = run.curves(ctx, "evaluated", 0.0, "step", [], [20, 120])
    figures = run.evaluation(ctx, "evaluated", 0.0, "step", [], [20, 120])
    for fig in (*curves, *figures):
        assert list(fig.layout.xaxis.range) == [20, 120]
        assert (fig.layout.margin.l, fig.layout.margin.r) == (200, 170)
    loss = run.curves(ctx, "evaluated", 0.0, "step", [])[0]
    for fig in run.evaluation(ctx, "evaluated", 0.0, "step", []):
        assert list(fig.layout.xaxis.range) == list(loss.layout.xaxis.range) == [-0.5, 199.5]
    # every subplot of the logged metrics follows the zoom too
    user = figures[2]
    assert list(user.layout.xaxis2.range) == [20, 120]
    # the time axis: the crafted clock runs 0.05 s a step
    timed = run.evaluation(ctx, "evaluated", 0.0, "time", [])[0]
    assert list(_trace(timed, "loader 0").x) == pytest.approx([s * 0.05 for s in EVAL_STEPS])


def test_the_overfitting_finding_is_shaded_on_the_eval_chart(ctx):
    deadline = 200
    while ctx.findings.state(ctx.run("evaluated"), start=True, wait=0.1).report is None:
        deadline -= 1
        assert deadline > 0
    report = ctx.findings.state(ctx.run("evaluated"), start=False).report
    found = [f for f in report.findings if f.rule == "overfitting"]
    assert [(f.step_start, f.step_end) for f in found] == [(99, 199)] * 2  # val and test
    loss, _accuracy, _ = run.evaluation(ctx, "evaluated", 0.0, "step", [])
    assert any(s.x0 == 98.5 and s.x1 == 199.5 for s in loss.layout.shapes)


def test_runs_without_evaluations_hide_the_charts(ctx):
    assert run.eval_styles(ctx.data("mlp")) == ({"display": "none"},) * 3
    assert run.eval_styles(ctx.data("evaluated")) == ({}, {}, {})
    page = str(render(ctx, "/run/mlp"))
    assert "eval-graph-box" in page and "'display': 'none'" in page
    loss, _accuracy, user = run.evaluation(ctx, "mlp", 0.0, "step", [])
    assert "no evaluation" in loss.layout.annotations[0].text
    assert "gradlens.log" in user.layout.annotations[0].text


def test_one_loader_is_labelled_eval_and_a_regression_loss_has_no_accuracy(tmp_path):
    craft_run(tmp_path, "regression", loss=decreasing_loss(100), rows=eval_rows([49, 99], [1, 2]))
    ctx = create_app(tmp_path).server.config["GRADLENS_CONTEXT"]
    loss, accuracy, _ = run.evaluation(ctx, "regression", 0.0, "step", [])
    assert next(t.name for t in loss.data) == "eval"
    assert "no eval accuracy" in accuracy.layout.annotations[0].text
    assert run.eval_styles(ctx.data("regression")) == ({}, {"display": "none"}, {"display": "none"})


def test_compare_overlays_every_loader_of_every_run(ctx):
    names = ["evaluated", "evaluated-2"]
    options, _ = compare.metric_options(ctx, names)
    values = [o["value"] for o in options]
    assert {"scalars|eval_loss", "scalars|eval_accuracy", "user|val/acc", "user|bleu"} <= set(
        values
    )
    charts, _ = compare.grid(ctx, names, ["evaluation", "logged"], None, None, 0.6, "step", [])
    keys = [c.children[0].id["key"] for c in charts if getattr(c, "className", "") == "chart"]
    assert keys == ["scalars|eval_loss", "scalars|eval_accuracy", "user|val/acc", "user|bleu"]
    training, _ = compare.grid(ctx, names, ["training"], None, None, 0.6, "step", [])
    assert "eval_loss" not in str(training) and "eval_samples" not in str(training)

    fig = compare.figure(ctx, names, "scalars|eval_loss", None, 0.6, "step", [])
    colours = compare.run_colours(ctx.catalog.names())
    lines = {t.name: t for t in fig.data}
    assert set(lines) == {f"{n} · loader {i}" for n in names for i in (0, 1)}
    for name in names:
        assert lines[f"{name} · loader 0"].line.color == colours[name]
        assert lines[f"{name} · loader 1"].line.color == colours[name]
        assert lines[f"{name} · loader 1"].line.dash == "dash"
        assert lines[f"{name} · loader 0"].line.dash is None
    np.testing.assert_allclose(lines["evaluated-2 · loader 0"].y, eval_curves(-0.2)["val_loss"])
    accuracy = compare.figure(ctx, names, "scalars|eval_accuracy", None, 0, "step", [])
    assert accuracy.layout.yaxis.tickformat == ".0%"
    logged = compare.figure(ctx, names, "user|val/acc", None, 0, "step", [])
    assert [t.name for t in logged.data] == names


def test_compare_with_a_run_without_evaluations(ctx, tmp_path):
    fig = compare.figure(ctx, ["mlp", "evaluated"], "scalars|eval_loss", None, 0, "step", [])
    assert {t.name for t in fig.data} == {"evaluated · loader 0", "evaluated · loader 1"}
    craft_eval_run(tmp_path, "solo")
    solo = create_app(tmp_path).server.config["GRADLENS_CONTEXT"]
    fig = compare.figure(solo, ["solo"], "scalars|eval_loss", None, 0, "step", [])
    assert len(fig.data) == 2


def test_eval_and_logged_series_download_as_csv(ctx):
    text = csv_text(ctx, "evaluated", {"table": "scalars", "metric": "eval_loss"})
    frame = pd.read_csv(__import__("io").StringIO(text))
    assert set(frame["series"]) == {"group 0", "group 1"} and len(frame) == 20
    text = csv_text(ctx, "evaluated", {"table": "user", "metric": "bleu"})
    assert text.splitlines()[0].startswith("step,value")
