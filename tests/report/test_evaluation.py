"""Evaluation numbers, the overfitting rule and the evaluation section, on crafted runs."""

from __future__ import annotations

import io
import json
import math

import jsonschema
import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from gradlens.report import (
    ReportConfig,
    Thresholds,
    build_report,
    render_json,
    render_markdown,
    report_renderable,
)
from gradlens.report.evaluation import eval_noise, train_loss_at
from gradlens.report.render_json import schema
from gradlens.store import open_run
from tests.report.craft import craft_run, eval_rows

STEPS = 1000
EVERY = 50
EVAL_STEPS = np.arange(EVERY - 1, STEPS, EVERY)  # 20 evaluations: 49, 99, …, 999


def _train(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 2.0 * np.exp(-np.arange(STEPS) / 200) + 0.1 + 0.02 * rng.standard_normal(STEPS)


def _overfit_eval() -> np.ndarray:
    """Falls to 0.6 at the 8th evaluation (step 399), then rises 0.03 per evaluation."""
    i = np.arange(len(EVAL_STEPS))
    return np.where(i <= 7, 1.5 - 0.9 * i / 7, 0.6 + 0.03 * (i - 7))


def _report(runs_dir, name="crafted", loss=None, **kwargs):
    run = craft_run(runs_dir, name, loss=_train() if loss is None else loss, **kwargs)
    return build_report(open_run(run))


def _overfits(report) -> list:
    return [f for f in report.findings if f.rule == "overfitting"]


def _status(report, rule="overfitting") -> str:
    return next(r.status for r in report.rules if r.rule == rule)


# -- definitions ---------------------------------------------------------------------------------


def test_train_loss_at_an_evaluation_is_the_median_since_the_previous_one():
    loss = pd.Series(np.arange(30, dtype=float))
    loss[15] = np.nan  # skipped
    loss[25] = 1e6  # a spike counts as one high value, not its size
    got = train_loss_at(loss, np.array([9, 19, 29]))
    # first window: the median gap (10 steps) back: steps 0–9
    assert got.tolist() == [4.5, 14.0, 25.0]  # 25: the median of 20–24, 26–29 and the spike
    # one evaluation looks back to the start; a window with no finite loss is NaN
    assert train_loss_at(loss, np.array([3])).tolist() == [1.5]
    assert math.isnan(train_loss_at(pd.Series([np.nan] * 5), np.array([4]))[0])


def test_eval_noise_ignores_the_trend():
    rng = np.random.default_rng(0)
    noise = 0.1 * rng.standard_normal(4000)
    assert eval_noise(noise) == pytest.approx(0.1, rel=0.05)
    trend = np.linspace(5, 1, 4000)  # a falling loss is not noise
    assert eval_noise(trend + noise) == pytest.approx(0.1, rel=0.05)
    assert eval_noise(trend) == pytest.approx(0.0, abs=1e-9)
    assert math.isnan(eval_noise(np.array([1.0, 2.0])))


# -- the overfitting rule ------------------------------------------------------------------------


def test_overfitting_fires_when_eval_loss_rises_while_train_loss_falls(runs_dir):
    report = _report(runs_dir, rows=eval_rows(EVAL_STEPS, _overfit_eval()))
    (finding,) = _overfits(report)
    assert finding.severity == "warning"
    assert (finding.step_start, finding.step_end) == (399, 999)
    # the last three evaluations: 0.90, 0.93, 0.96 → the lowest is 0.9/0.6 of the best
    assert finding.value == pytest.approx((0.6 + 0.03 * 10) / 0.6)
    assert finding.threshold == pytest.approx(1.05)
    assert "best 0.6 at step 399" in finding.evidence
    assert _status(report) == "failed"


def test_steady_improvement_does_not_fire(runs_dir):
    rng = np.random.default_rng(3)
    falling = 1.5 * np.exp(-EVAL_STEPS / 300) + 0.3 + 0.01 * rng.standard_normal(len(EVAL_STEPS))
    report = _report(runs_dir, rows=eval_rows(EVAL_STEPS, falling))
    assert _overfits(report) == [] and _status(report) == "passed"


@pytest.mark.parametrize("seed", range(25))
def test_noisy_flat_eval_loss_does_not_fire(runs_dir, seed):
    rng = np.random.default_rng(seed)
    flat = 0.8 + 0.05 * rng.standard_normal(len(EVAL_STEPS))  # noise 6% of the loss
    report = _report(runs_dir, f"flat-{seed}", rows=eval_rows(EVAL_STEPS, flat))
    assert _overfits(report) == []


def test_a_rise_within_the_noise_does_not_fire(runs_dir):
    # a rise of 0.15, but evaluations jitter by ±0.1: not above four noise stds
    rng = np.random.default_rng(1)
    noisy = _overfit_eval() * 0.5 + 0.1 * rng.standard_normal(len(EVAL_STEPS))
    report = _report(runs_dir, rows=eval_rows(EVAL_STEPS, noisy))
    assert _overfits(report) == []


def test_eval_loss_rising_with_a_flat_train_loss_is_not_overfitting(runs_dir):
    flat_train = np.full(STEPS, 0.5)
    report = _report(runs_dir, loss=flat_train, rows=eval_rows(EVAL_STEPS, _overfit_eval()))
    assert _overfits(report) == []


def test_too_few_evaluations_are_not_judged(runs_dir):
    rising = [0.6, 0.66, 0.72, 0.78]  # the best, then three above it: four evaluations
    run = craft_run(runs_dir, loss=_train(), rows=eval_rows(EVAL_STEPS[-4:], rising))
    assert _overfits(build_report(open_run(run))) == []
    # the minimum (five) is the reason: asked for four, the same evaluations fire
    config = ReportConfig(thresholds=Thresholds().replace(overfit_min_evals=4))
    assert len(_overfits(build_report(open_run(run), config))) == 1


def test_each_loader_is_judged_on_its_own(runs_dir):
    rng = np.random.default_rng(5)
    val = 1.5 * np.exp(-EVAL_STEPS / 300) + 0.3 + 0.01 * rng.standard_normal(len(EVAL_STEPS))
    rows = eval_rows(EVAL_STEPS, val) + eval_rows(EVAL_STEPS, _overfit_eval(), index=1)
    (finding,) = _overfits(_report(runs_dir, rows=rows))
    assert "(loader 1)" in finding.message


def test_no_eval_rows_skips_the_rule_and_the_section(runs_dir):
    report = _report(runs_dir)
    assert _status(report) == "skipped"
    assert report.evaluation is None
    assert all(s.title != "Evaluation" for s in report.sections)
    data = json.loads(render_json(report))
    assert data["evaluation"] is None
    jsonschema.validate(data, schema())
    assert "Evaluation" not in render_markdown(report)


# -- the section and its renderings --------------------------------------------------------------


def _classification_run(runs_dir):
    loss = _overfit_eval()
    accuracy = np.linspace(0.5, 0.9, len(EVAL_STEPS))
    accuracy[12] = 0.95  # the best accuracy is not the last
    test = eval_rows(EVAL_STEPS, loss + 0.1, accuracy - 0.05, samples=200, index=1)
    return _report(
        runs_dir,
        "classifier",
        rows=eval_rows(EVAL_STEPS, loss, accuracy, samples=1000) + test,
        user=[(99, "val/acc", 0.7), (999, "val/acc", 0.9), (999, "bleu", 21.4)],
    )


def test_evaluation_numbers_per_loader(runs_dir):
    report = _classification_run(runs_dir)
    val, test = report.evaluation["loaders"]
    assert (val["index"], test["index"]) == (0, 1)
    assert (val["best_loss"], val["best_loss_step"]) == (pytest.approx(0.6), 399)
    assert (val["last_loss"], val["last_step"]) == (pytest.approx(0.96), 999)
    assert (val["best_accuracy"], val["best_accuracy_step"]) == (pytest.approx(0.95), 649)
    assert val["last_accuracy"] == pytest.approx(0.9)
    assert (val["samples"], test["samples"]) == (1000, 200)
    assert test["best_loss"] == pytest.approx(0.7)
    # the gap at each evaluation: eval loss − median train loss since the previous one
    train = _train()
    gap = val["gap"][3]
    assert gap["step"] == 199
    assert gap["train_loss"] == pytest.approx(np.median(train[150:200]))
    assert gap["gap"] == pytest.approx(_overfit_eval()[3] - np.median(train[150:200]))


def test_evaluation_section_in_text_markdown_and_json(runs_dir):
    report = _classification_run(runs_dir)
    section = next(s for s in report.sections if s.title == "Evaluation")
    rows = dict(section.rows)
    assert rows["evaluations"] == "20 (steps 49–999), loaders 0, 1"
    assert rows["eval loss: best · last (loader 0)"] == "0.6 (step 399) · 0.96 (step 999)"
    assert rows["eval accuracy: best · last (loader 0)"] == "95.00% (step 649) · 90.00%"
    assert rows["samples per evaluation (loader 1)"] == "200"
    assert "generalization gap (eval − train loss) (loader 0)" in rows
    logged = dict(next(s for s in report.sections if s.title.startswith("Logged")).rows)
    assert logged == {"val/acc": "0.9 at step 999 (2 values)", "bleu": "21.4 at step 999 (1 value)"}

    console = Console(file=io.StringIO(), width=100, color_system=None, force_terminal=False)
    console.print(report_renderable(report))
    text = console.file.getvalue()
    assert "Evaluation" in text and "0.6 (step 399)" in text and "overfitting" in text
    markdown = render_markdown(report)
    assert "### Evaluation" in markdown and "| eval loss: best · last (loader 1) |" in markdown
    data = json.loads(render_json(report))
    jsonschema.validate(data, schema())
    assert len(data["evaluation"]["loaders"][0]["gap"]) == 20
    assert any(r["rule"] == "overfitting" for r in data["findings"])


def test_a_nonfinite_evaluation_is_null_in_json(runs_dir):
    loss = _overfit_eval()
    loss[-1] = np.nan
    report = _report(runs_dir, rows=eval_rows(EVAL_STEPS, loss))
    data = json.loads(render_json(report))
    jsonschema.validate(data, schema())
    loader = data["evaluation"]["loaders"][0]
    assert loader["last_loss"] is None and loader["gap"][-1]["gap"] is None
    assert loader["best_loss"] == pytest.approx(0.6)


# -- gradlens compare ----------------------------------------------------------------------------


def test_compare_shows_the_first_loaders_eval_numbers(runs_dir):
    from gradlens.report import compare_runs, render_compare

    evaluated = craft_run(
        runs_dir, "evaluated", loss=_train(), rows=eval_rows(EVAL_STEPS, _overfit_eval())
    )
    plain = craft_run(runs_dir, "plain", loss=_train())
    comparison = compare_runs([open_run(plain), open_run(evaluated)])
    rows = {r["run"]: r for r in comparison.rows}
    assert rows["plain"]["best_eval_loss"] is None
    assert rows["evaluated"]["best_eval_loss"] == pytest.approx(0.6)
    assert rows["evaluated"]["last_eval_loss"] == pytest.approx(0.96)
    assert rows["evaluated"]["best_eval_accuracy"] is None  # no accuracy rows: no line
    console = Console(file=io.StringIO(), width=120, color_system=None, force_terminal=False)
    console.print(render_compare(comparison, "text"))
    text = console.file.getvalue()
    assert "best eval loss" in text and "0.96" in text and "eval accuracy" not in text
    markdown = render_compare(comparison, "markdown")
    header = markdown.splitlines()[2]
    assert "| last eval loss | findings |" in header and "accuracy" not in header
    data = json.loads(render_compare(comparison, "json"))
    assert data["runs"][0]["best_eval_loss"] is None
    # runs without evaluations: no eval lines at all
    alone = compare_runs([open_run(plain), open_run(plain)])
    console = Console(file=io.StringIO(), width=120, color_system=None, force_terminal=False)
    console.print(render_compare(alone, "text"))
    assert "eval" not in console.file.getvalue()
