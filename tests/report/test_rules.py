"""Every rule on crafted runs with known problems (and without)."""

from __future__ import annotations

import numpy as np
import pytest

from gradlens.report import Thresholds, build_report
from gradlens.report.config import ReportConfig
from gradlens.store import open_run
from tests.report.craft import craft_run, decreasing_loss


def _findings(run_dir, rule=None, **thresholds):
    config = ReportConfig(thresholds=Thresholds().replace(**thresholds))
    report = build_report(open_run(run_dir), config)
    return [f for f in report.findings if rule is None or f.rule == rule]


def _healthy_layers(steps=200, n=4, seed=0):
    rng = np.random.default_rng(seed)
    grad = np.exp(rng.normal(0, 0.2, (steps, n)))
    return {
        "grad_norm": grad,
        "param_norm": np.full((steps, n), 10.0),
        "update_ratio": np.full((steps, n), 1e-3),
    }


def test_healthy_crafted_run_has_no_findings(runs_dir):
    run = craft_run(runs_dir, loss=decreasing_loss(), layers=_healthy_layers())
    report = build_report(open_run(run))
    assert report.findings == []
    assert {r.status for r in report.rules} <= {"passed", "skipped"}


@pytest.mark.parametrize(
    "status,severity",
    [
        ("failed", "error"),
        ("crashed", "error"),
        ("interrupted", "warning"),
        ("running", "info"),
    ],
)
def test_run_status(runs_dir, status, severity, monkeypatch):
    run = craft_run(
        runs_dir,
        loss=decreasing_loss(),
        status=status,
        meta={"error": "ValueError: boom"} if status == "failed" else None,
    )
    if status == "crashed":  # a dead writer: 'running' in meta.json, no such process
        from gradlens.store import update_meta

        update_meta(run, status="running", pid=2**22 + 12345)
    (finding,) = _findings(run, "run_status")
    assert finding.severity == severity
    if status == "failed":
        assert "ValueError: boom" in finding.evidence


def test_nonfinite_names_first_step_and_layer(runs_dir):
    events = [
        {"step": 40, "kind": "nonfinite_grad", "layer": "blocks.3.attn", "value": 12.0},
        {"step": 40, "kind": "nonfinite_loss", "metric": "loss", "value": np.nan},
        {"step": 41, "kind": "nonfinite_grad", "layer": "blocks.3.attn", "value": 99.0},
    ]
    run = craft_run(runs_dir, loss=decreasing_loss(), events=events)
    (finding,) = _findings(run, "nonfinite")
    assert finding.severity == "error"
    assert (finding.step_start, finding.step_end, finding.layer) == (40, 41, "blocks.3.attn")
    assert "12 entries" in finding.evidence and "2 step(s)" in finding.evidence


def _loss_spike(step, value=5.0, baseline=0.5):
    return {
        "step": step,
        "kind": "loss_spike",
        "metric": "loss",
        "value": value,
        "baseline": baseline,
        "ratio": value / baseline,
    }


def test_recovered_loss_spike_is_a_warning(runs_dir):
    loss = np.full(200, 0.5)
    loss[100] = 5.0
    run = craft_run(runs_dir, loss=loss, events=[_loss_spike(100)])
    (finding,) = _findings(run, "loss_spikes")
    assert finding.severity == "warning" and finding.steps == "100"
    assert "10.0×" in finding.evidence and "recovered" in finding.evidence


def test_unrecovered_loss_spike_is_an_error(runs_dir):
    loss = np.full(200, 0.5)
    loss[100:] = 3.0  # jumps and stays up
    run = craft_run(runs_dir, loss=loss, events=[_loss_spike(100, 3.0)])
    (finding,) = _findings(run, "loss_spikes")
    assert finding.severity == "error" and "not recovered" in finding.evidence


def test_repeated_loss_spikes_are_an_error(runs_dir):
    loss = np.full(300, 0.5)
    events = [_loss_spike(s) for s in (50, 51, 100, 150, 200)]  # 4 clusters (50-51 is one)
    run = craft_run(runs_dir, loss=loss, events=events)
    found = _findings(run, "loss_spikes")
    assert [f.severity for f in found].count("warning") == 4
    summary = [f for f in found if f.severity == "error"]
    assert len(summary) == 1 and summary[0].value == 4


def test_gradient_spike_cluster_names_worst_layer(runs_dir):
    events = [
        {"step": 80, "kind": "grad_spike", "value": 30.0, "baseline": 2.0, "ratio": 15.0},
        {
            "step": 80,
            "kind": "layer_grad_spike",
            "layer": "fc1.weight",
            "value": 9.0,
            "baseline": 1.0,
            "ratio": 9.0,
        },
        {
            "step": 81,
            "kind": "layer_grad_spike",
            "layer": "fc2.weight",
            "value": 40.0,
            "baseline": 1.0,
            "ratio": 40.0,
        },
    ]
    run = craft_run(runs_dir, loss=decreasing_loss(), events=events)
    (finding,) = _findings(run, "grad_spikes")
    assert (finding.severity, finding.steps, finding.layer) == ("warning", "80–81", "fc2.weight")
    assert "15.0×" in finding.evidence and "2 layer(s)" in finding.evidence


def test_many_amp_skips(runs_dir):
    skipped = np.zeros(200)
    skipped[::10] = 1  # 20 of 200 > max(10, 5%)
    run = craft_run(runs_dir, loss=decreasing_loss(), scalars={"skipped": skipped})
    (finding,) = _findings(run, "amp_skips")
    assert finding.value == 20 and finding.severity == "warning"
    skipped[::20] = 0
    run2 = craft_run(runs_dir, "few", loss=decreasing_loss(), scalars={"skipped": skipped})
    assert _findings(run2, "amp_skips") == []


def test_exploding_layer_is_an_error(runs_dir):
    layers = _healthy_layers()
    layers["grad_norm"][150:, 2] = 5e3  # 1e3+ × the median for the last 25% of steps
    run = craft_run(runs_dir, loss=decreasing_loss(), layers=layers)
    (finding,) = _findings(run, "exploding_layers")
    assert finding.severity == "error" and finding.layer == "layer2.weight"
    assert finding.value > 1e3
    layers["grad_norm"][150:180, 2] = 1.0  # not sustained over the window any more
    run2 = craft_run(runs_dir, "brief", loss=decreasing_loss(), layers=layers)
    assert _findings(run2, "exploding_layers") == []


def test_vanishing_and_dead_layers(runs_dir):
    layers = _healthy_layers(n=5)
    layers["grad_norm"][:, 1] = 1e-7
    layers["grad_norm"][:, 4] = 0.0
    names = ["a.weight", "b.weight", "c.weight", "d.bias", "e.weight"]
    layers["grad_norm"][:, 3] = 1e-7  # a tiny bias gradient is normal: not flagged
    run = craft_run(runs_dir, loss=decreasing_loss(), layers=layers, names=names)
    found = {(f.layer, f.message) for f in _findings(run, "vanishing_layers")}
    assert found == {
        ("b.weight", "vanishing layer gradient"),
        ("e.weight", "tensor never received a gradient"),
    }


def test_update_ratio_out_of_range(runs_dir):
    layers = _healthy_layers()
    layers["update_ratio"][:, 0] = 0.5
    layers["update_ratio"][:, 3] = 1e-9
    run = craft_run(runs_dir, loss=decreasing_loss(), layers=layers)
    found = {f.layer: f.message for f in _findings(run, "update_ratio")}
    assert found == {
        "layer0.weight": "updates too large for the weights",
        "layer3.weight": "weights barely move",
    }


@pytest.mark.parametrize(
    "shape,severity,message",
    [
        ("diverge", "error", "loss diverged"),
        ("rebound", "warning", "loss rose again"),
        ("flat", "warning", "loss did not decrease"),
        ("plateau", "info", "loss plateaued"),
        ("plateau_up", "info", "loss plateaued"),
    ],
)
def test_loss_trend(runs_dir, shape, severity, message):
    steps = np.arange(300)
    loss = {
        "diverge": 1.0 + np.maximum(0, steps - 100) * 0.02,  # ends at 5 > start 1
        "rebound": np.where(steps < 150, 2 - steps / 100, 0.5 + (steps - 150) / 100),
        "flat": np.full(300, 1.0),
        "plateau": np.where(steps < 100, 2 - steps / 100, 1.0),
        # down, then up a little (not enough to count as rising again)
        "plateau_up": np.where(steps < 100, 2 - steps / 100, 1.0 + (steps - 100) / 2000),
    }[shape]
    run = craft_run(runs_dir, loss=loss)
    (finding,) = _findings(run, "loss_trend")
    assert (finding.severity, finding.message) == (severity, message)
    if shape == "plateau_up":  # said as a rise, not as a negative improvement
        assert finding.evidence.startswith("the loss rose by 0.0") and "-" not in finding.evidence


def test_probe_rules_are_skipped_without_their_tables(runs_dir):
    run = craft_run(runs_dir, loss=decreasing_loss())
    report = build_report(open_run(run))
    statuses = {r.rule: r.status for r in report.rules}
    assert statuses["exploding_layers"] == "skipped"  # no layers table
    assert statuses["loss_trend"] == "passed"


def _write_probe_table(run_dir, table, rows):
    from gradlens.store import RunWriter

    writer = RunWriter(run_dir, strict=True)
    writer.write(table, {k: [r[k] for r in rows] for k in rows[0]})
    writer.close()


def test_edge_of_stability_rule(runs_dir):
    run = craft_run(runs_dir, loss=decreasing_loss())
    rows = []
    for step, ratio in [(0, 0.3), (50, 0.8), (100, 1.05), (150, 0.99)]:
        rows += [
            {"step": step, "metric": "eos_ratio", "layer": "", "index": 0, "value": ratio},
            {
                "step": step,
                "metric": "top_eigenvalue",
                "layer": "",
                "index": 0,
                "value": ratio * 200,
            },
        ]
    _write_probe_table(run, "hessian", rows)
    (finding,) = _findings(run, "edge_of_stability")
    assert finding.steps == "100" and finding.value == pytest.approx(1.05)
    assert "λmax 210" in finding.evidence


def test_softmax_collapse_rule(runs_dir):
    run = craft_run(runs_dir, loss=decreasing_loss())
    values = [0.0, 0.05, 0.3, 0.6, 0.9, 0.9, 0.95, 0.4]
    rows = [
        {"step": s, "metric": "saturated_fraction", "layer": "", "value": v}
        for s, v in enumerate(values)
    ]
    _write_probe_table(run, "softmax", rows)
    (finding,) = _findings(run, "softmax_collapse")
    assert (finding.step_start, finding.step_end) == (2, 7) and finding.value == 0.95
    # one saturated step (right after a learning-rate spike, say) is not a collapse
    brief = craft_run(runs_dir, "brief", loss=decreasing_loss())
    rows = [
        {"step": s, "metric": "saturated_fraction", "layer": "", "value": 0.9 if s == 3 else 0.0}
        for s in range(10)
    ]
    _write_probe_table(brief, "softmax", rows)
    assert _findings(brief, "softmax_collapse") == []


def _collapse_rows(points):
    return [
        {"step": s, "metric": m, "value": v}
        for s, cdnv, nc1 in points
        for m, v in (("cdnv", cdnv), ("nc1", nc1))
    ]


def test_neural_collapse_regression_rule(runs_dir):
    run = craft_run(runs_dir, loss=decreasing_loss())
    _write_probe_table(
        run, "collapse", _collapse_rows([(0, 5.0, 9.0), (100, 0.2, 3.0), (200, 0.5, 2.0)])
    )
    (finding,) = _findings(run, "neural_collapse_regression")
    assert finding.value == pytest.approx(2.5) and finding.step_start == 100
    # NC1 rising alone while CDNV improves (weight decay shrinking features) is no regression
    healthy = craft_run(runs_dir, "healthy", loss=decreasing_loss())
    _write_probe_table(
        healthy, "collapse", _collapse_rows([(0, 2.0, 15.0), (100, 1.0, 16.0), (200, 0.1, 25.0)])
    )
    assert _findings(healthy, "neural_collapse_regression") == []


def test_loss_trend_judges_the_last_training_phase(runs_dir):
    """A sweep trains three models in turn: each starts from a high loss (meta.phases says
    where a new optimizer took over); only a rise within the last phase is a rise."""
    steps = np.arange(300)
    rate = np.where(steps < 200, 80, 200)  # the third learning rate is slower
    healthy = 2.0 - (steps % 100) / rate  # three fresh starts, each trained down
    run = craft_run(runs_dir, loss=healthy, meta={"phases": [100, 200]})
    assert _findings(run, "loss_trend") == []
    run = craft_run(runs_dir, "no-phases", loss=healthy)  # the same losses as one model
    assert [f.message for f in _findings(run, "loss_trend")] == ["loss rose again"]
    rising = np.where(steps < 250, healthy, 1.75 + (steps - 250) / 20)  # last phase diverges
    run = craft_run(runs_dir, "rising", loss=rising, meta={"phases": [100, 200]})
    (finding,) = _findings(run, "loss_trend")
    assert finding.evidence.endswith("(the last training phase, from step 200)")
