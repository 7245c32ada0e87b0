"""Online spike detection on crafted series with known spikes."""

from __future__ import annotations

import numpy as np
import pytest

from gradlens.capture.spikes import EmaBaseline, SpikeConfig, SpikeDetector


def _feed(detector, losses, grads, layers=None, nonfinite=None):
    events = []
    for step, (loss, grad) in enumerate(zip(losses, grads)):
        layer = np.array([grad] if layers is None else layers[step], dtype=float)
        bad = np.zeros(len(layer)) if nonfinite is None else nonfinite[step]
        events += detector.update(step, loss, grad, layer, bad, skipped=False)
    return events


def test_ema_baseline_is_bias_corrected():
    ema = EmaBaseline(1, beta=0.9)
    for _ in range(3):
        ema.update(np.array([5.0]), np.array([True]))
    mean, std = ema.baseline()
    assert mean[0] == pytest.approx(5.0)
    assert std[0] == pytest.approx(0.0)


def test_noisy_healthy_series_raises_nothing():
    rng = np.random.default_rng(0)
    losses = 2.0 * np.exp(-np.arange(400) / 100) + 0.1 + 0.05 * rng.standard_normal(400)
    grads = 1.0 + 0.3 * rng.standard_normal(400) ** 2
    assert _feed(SpikeDetector(["l"]), losses, grads) == []


def test_spike_is_reported_at_its_step_with_baseline_and_ratio():
    losses = np.full(100, 1.0)
    grads = np.full(100, 2.0)
    losses[60], grads[60] = 5.0, 40.0
    events = _feed(SpikeDetector(["l"]), losses, grads)
    kinds = {(e["step"], e["kind"]) for e in events}
    assert kinds == {(60, "loss_spike"), (60, "grad_spike"), (60, "layer_grad_spike")}
    grad = next(e for e in events if e["kind"] == "grad_spike")
    assert grad["baseline"] == pytest.approx(2.0)
    assert grad["ratio"] == pytest.approx(20.0)


def test_no_events_during_warmup():
    losses = np.ones(30)
    losses[5] = 100.0
    assert _feed(SpikeDetector(["l"], SpikeConfig(warmup=10)), losses, np.ones(30)) == []


def test_spike_does_not_poison_the_baseline():
    grads = np.full(80, 1.0)
    grads[40], grads[41] = 50.0, 50.0  # two in a row: the second is still a spike
    events = _feed(SpikeDetector(["l"]), np.ones(80), grads)
    assert [e["step"] for e in events if e["kind"] == "grad_spike"] == [40, 41]


def test_nonfinite_loss_and_gradients_name_the_layer_nearest_the_output():
    det = SpikeDetector(["embed", "hidden", "head"])
    events = det.update(
        7,
        float("nan"),
        float("nan"),
        np.array([np.nan, np.nan, 1.0]),
        np.array([3.0, 5.0, 0.0]),
        skipped=False,
    )
    kinds = {e["kind"]: e for e in events}
    assert set(kinds) == {"nonfinite_loss", "nonfinite_grad"}
    assert kinds["nonfinite_grad"]["layer"] == "hidden"
    assert kinds["nonfinite_grad"]["value"] == 5.0
    assert "2 of 3" in kinds["nonfinite_grad"]["detail"]


def test_skipped_step_is_an_event_but_not_a_nonfinite_one():
    det = SpikeDetector(["a"])
    events = det.update(3, 1.0, float("inf"), np.array([np.inf]), np.array([2.0]), skipped=True)
    assert [e["kind"] for e in events] == ["skipped_step"]


@pytest.mark.parametrize("bad", [{"beta": 1.5}, {"warmup": 0}, {"grad_ratio": 1.0}])
def test_config_validation(bad):
    with pytest.raises(ValueError):
        SpikeConfig(**bad)
