"""Sampled metrics (param_every, softmax_every, cos_every): named by every renderer, and read
by the rules as the sparse series they are."""

from __future__ import annotations

import io
import json

import jsonschema
import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from gradlens.report import (
    build_report,
    render_json,
    render_junit,
    render_markdown,
    report_renderable,
)
from gradlens.report.config import ReportConfig, Thresholds
from gradlens.report.render_json import schema
from gradlens.report.sampling import (
    COSINE,
    PARAM_METRICS,
    SOFTMAX_SIGNALS,
    sampling_note,
    sampling_of,
)
from gradlens.store import RunWriter, open_run
from tests.report.craft import craft_run, decreasing_loss

SAMPLED = {"config": {"param_every": 10, "softmax_every": 20, "cos_every": 20}}
NOTE = "‖θ‖, ‖Δθ‖, ‖Δθ‖/‖θ‖ every 10 steps; softmax signals, cos(gradient, weights) every 20 steps"


def _text(report) -> str:
    console = Console(file=io.StringIO(), width=200, color_system=None, force_terminal=False)
    console.print(report_renderable(report))
    return console.file.getvalue()


def _rows(step_list, layer, metric, value):
    return [(int(s), layer, metric, float(value)) for s in step_list]


# -- what the config says ------------------------------------------------------------------------


def test_sampling_of_reads_the_config_and_keeps_what_the_run_has():
    full = sampling_of(SAMPLED)
    assert full["layers"] == dict.fromkeys(PARAM_METRICS, 10)
    assert full["softmax"] == {**dict.fromkeys(SOFTMAX_SIGNALS, 20), COSINE: 20}
    present = {"layers": {"grad_norm", "param_norm"}, "softmax": {"saturated_fraction"}}
    assert sampling_of(SAMPLED, present) == {
        "layers": {"param_norm": 10},
        "softmax": {"saturated_fraction": 20},
    }
    # the cosines on their own schedule; none recorded (cos_every=0), none named
    assert sampling_of({"config": {"softmax_every": 5, "cos_every": 0}})["softmax"] == (
        dict.fromkeys(SOFTMAX_SIGNALS, 5)
    )


@pytest.mark.parametrize(
    "meta",
    [
        {},  # a run recorded before sampling: no config at all
        {"config": {"every": 50, "track_softmax": True}},  # a config without the keys
        {"config": {"param_every": 1, "softmax_every": 1, "cos_every": 1}},  # every step
        {"config": {"param_every": True, "softmax_every": "20", "cos_every": -3}},  # garbage
        {"config": "param_every=10"},
    ],
)
def test_nothing_is_sampled_without_a_schedule_above_one(meta):
    assert sampling_of(meta) == {}
    assert sampling_note(sampling_of(meta)) == ""


def test_the_note_groups_metrics_by_schedule():
    assert sampling_note(sampling_of(SAMPLED)) == NOTE
    config = {"config": {"param_every": 20, "softmax_every": 20, "cos_every": 50}}
    assert sampling_note(sampling_of(config)) == (
        "‖θ‖, ‖Δθ‖, ‖Δθ‖/‖θ‖, softmax signals every 20 steps; cos(gradient, weights) every 50 steps"
    )


def test_softmax_signals_are_the_capture_s_names():
    """The report does not import torch, so it lists the names itself: they must be the
    capture's stats plus the two drifts its writer adds."""
    pytest.importorskip("torch")  # the floors job runs the report's tests without torch
    from gradlens.functional.softmax import SOFTMAX_STATS

    assert (*SOFTMAX_STATS, "log_z_drift", "logit_norm_growth") == SOFTMAX_SIGNALS


# -- a recorded run ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """45 steps of a small classifier with the default schedules (10, 20, 20)."""
    pytest.importorskip("torch")
    import torch
    import torch.nn.functional as F
    from torch import nn

    import gradlens

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    runs = tmp_path_factory.mktemp("sampled")
    with gradlens.Lens(model, opt, runs_dir=runs, name="sampled") as lens:
        for _ in range(45):
            x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    return lens.run_dir


def test_a_recorded_run_names_exactly_its_sampled_metrics(recorded):
    run = open_run(recorded)
    layers, softmax = run.table("layers"), run.table("softmax")
    sparse = {
        str(m)
        for m, part in layers.groupby("metric")
        if sorted(part["step"].unique()) == [0, 10, 20, 30, 40]
    }
    assert sparse == set(PARAM_METRICS)  # gradient norms and non-finite counts every step
    assert set(softmax["step"]) == {0, 20, 40}
    report = build_report(run)
    assert report.sampling == {
        "layers": dict.fromkeys(PARAM_METRICS, 10),
        "softmax": dict.fromkeys(set(softmax["metric"]), 20),  # every one it recorded
    }
    assert COSINE in report.sampling["softmax"]
    assert f"sampled: {NOTE} (the rest every step)" in _text(report)
    assert f"_sampled: {NOTE} (the rest every step)_" in render_markdown(report)
    out = json.loads(render_json(report))
    jsonschema.validate(out, schema())
    assert out["sampling"]["layers"] == {"param_norm": 10, "update_norm": 10, "update_ratio": 10}
    assert out["sampling"]["softmax"]["grad_weight_cos"] == 20
    assert f'<property name="sampled" value="{NOTE}" />' in render_junit(report)


def test_hand_written_updates_are_not_called_sampled(runs_dir):
    """Without an optimizer (manual SGD) θ and Δθ are read at every step, whatever
    ``param_every`` says: the report must not call them sampled."""
    pytest.importorskip("torch")
    import torch
    import torch.nn.functional as F
    from torch import nn

    import gradlens

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    with gradlens.Lens(model, runs_dir=runs_dir, name="manual", track_softmax=False) as lens:
        for _ in range(25):
            model.zero_grad()
            F.cross_entropy(model(torch.randn(16, 4)), torch.randint(0, 3, (16,))).backward()
            with torch.no_grad():
                for p in model.parameters():
                    p -= 0.1 * p.grad
    run = open_run(lens.run_dir)
    assert run.meta["optimizers"] == [] and run.meta["config"]["param_every"] == 10
    ratio = run.table("layers", filters=[("metric", "==", "update_ratio")])
    assert len(set(ratio.step)) >= 20  # every step
    report = build_report(run)
    assert report.sampling == {}
    assert "sampled" not in _text(report)


def test_an_old_run_says_nothing_about_sampling(runs_dir):
    layers = {"grad_norm": np.ones((100, 3)), "update_ratio": np.full((100, 3), 1e-3)}
    report = build_report(open_run(craft_run(runs_dir, loss=decreasing_loss(100), layers=layers)))
    assert report.sampling == {}
    assert "sampled" not in _text(report)
    assert "sampled" not in render_markdown(report)
    out = json.loads(render_json(report))
    jsonschema.validate(out, schema())
    assert out["sampling"] == {}
    assert "<properties" not in render_junit(report)


def test_a_run_without_softmax_does_not_mention_it(runs_dir):
    steps = range(0, 100, 10)
    rows = _rows(steps, "a.weight", "update_ratio", 1e-3)
    rows += _rows(steps, "a.weight", "param_norm", 1.0)
    run = craft_run(
        runs_dir,
        loss=decreasing_loss(100),
        layers={"grad_norm": np.ones((100, 1))},
        names=["a.weight"],
        layer_rows=rows,
        meta=SAMPLED,
    )
    report = build_report(open_run(run))
    assert report.sampling == {"layers": {"param_norm": 10, "update_ratio": 10}}
    assert "sampled: ‖θ‖, ‖Δθ‖, ‖Δθ‖/‖θ‖ every 10 steps (the rest every step)" in _text(report)


# -- rules and rankings on sparse series ---------------------------------------------------------


def _two_optimizers(runs_dir, b_ratio: float, b_value=1e-3):
    """``a.*`` recorded on the run's steps; ``b.*`` (a second optimizer, stepping every third
    step) on its own count, so its last record is at step 60. ‖Δθ‖/‖θ‖ every 10 steps."""
    steps = 200
    names = ["a0.weight", "a1.weight", "a2.weight", "b.weight"]
    layer_rows = []
    for name in names[:3]:
        layer_rows += _rows(range(steps), name, "grad_norm", 1.0)
        layer_rows += _rows(range(0, steps, 10), name, "update_ratio", 1e-3)
    layer_rows += _rows(range(67), "b.weight", "grad_norm", 2.0)
    layer_rows += _rows(range(0, 67, 10), "b.weight", "update_ratio", b_ratio)
    return craft_run(
        runs_dir,
        loss=decreasing_loss(steps),
        layer_rows=layer_rows,
        meta=SAMPLED,
    )


def test_update_ratio_rule_reads_each_layer_over_its_own_samples(runs_dir):
    """Over a window shared by all layers (the last rows of steps 0–190) b.weight has no
    sample and its 0.5 per step went unreported; each layer's own last window finds it."""
    run = _two_optimizers(runs_dir, b_ratio=0.5)
    report = build_report(open_run(run))
    (finding,) = [f for f in report.findings if f.rule == "update_ratio"]
    assert (finding.layer, finding.message) == ("b.weight", "updates too large for the weights")
    assert (finding.step_start, finding.step_end) == (50, 60)
    assert "over steps 50–60 (2 samples, every 10 steps)" in finding.evidence


def test_layer_rankings_do_not_call_unrecorded_steps_non_finite(runs_dir):
    """A step a layer was not recorded at is no value: before, the gaps of a second
    optimizer's layers in the shared step window ranked them as NaN/Inf."""
    report = build_report(open_run(_two_optimizers(runs_dir, b_ratio=2e-3)))
    assert "grad_norm_nonfinite" not in report.layers
    assert "update_ratio_nonfinite" not in report.layers
    assert report.layers["grad_norm_largest"][0] == ("b.weight", 2.0)
    assert report.layers["update_ratio_largest"][0] == ("b.weight", pytest.approx(2e-3))
    assert "NaN/Inf" not in _text(report)


def test_a_recorded_nan_is_still_non_finite(runs_dir):
    steps = 100
    rows = []
    for i, name in enumerate(["a.weight", "b.weight", "c.weight"]):
        rows += _rows(range(steps), name, "grad_norm", 1.0 + i)
        value = np.nan if name == "c.weight" else 1e-3
        rows += _rows(range(0, steps, 10), name, "update_ratio", value)
    run = craft_run(runs_dir, loss=decreasing_loss(steps), layer_rows=rows, meta=SAMPLED)
    report = build_report(open_run(run))
    assert [name for name, _ in report.layers["update_ratio_nonfinite"]] == ["c.weight"]


def test_softmax_collapse_counts_recorded_steps(runs_dir):
    run = craft_run(runs_dir, loss=decreasing_loss(), meta=SAMPLED)
    values = [0.0, 0.05, 0.3, 0.6, 0.9, 0.9, 0.95, 0.4]
    writer = RunWriter(run, strict=True)
    writer.write(
        "softmax",
        {
            "step": [20 * i for i in range(len(values))],
            "metric": ["saturated_fraction"] * len(values),
            "layer": [""] * len(values),
            "value": values,
        },
    )
    writer.close()
    report = build_report(open_run(run), ReportConfig(thresholds=Thresholds()))
    (finding,) = [f for f in report.findings if f.rule == "softmax_collapse"]
    assert "in 6 of 8 recorded steps (every 20 steps), from step 40" in finding.evidence
    assert (finding.step_start, finding.step_end) == (40, 140)


def test_last_window_spans_the_last_fraction_of_the_steps(runs_dir):
    from gradlens.report.data import RunData

    data = RunData(open_run(craft_run(runs_dir, loss=decreasing_loss(100))))
    dense = pd.Series(np.arange(100.0), index=np.arange(100))
    assert list(data.last_window(dense, 0.2).index) == list(range(80, 100))  # the last 20 rows
    sampled = pd.Series(1.0, index=[*range(0, 200, 10), 199])  # and a probe's step
    assert list(data.last_window(sampled, 0.2).index) == [160, 170, 180, 190, 199]
    assert list(data.last_window(sampled.iloc[:1], 0.2).index) == [0]
