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


def _reference(detector, step, loss, grad_norm, layer_norms, nonfinite, skipped):
    """The detector's definition, one step at a time (the loop it replaced)."""
    events = []
    if skipped:
        events.append({"step": step, "kind": "skipped_step"})
    else:
        if loss is not None and not np.isfinite(loss):
            events.append({"step": step, "kind": "nonfinite_loss"})
        bad = np.flatnonzero(nonfinite > 0)
        if len(bad):
            layer = detector.layers[bad[-1]]
            events.append({"step": step, "kind": "nonfinite_grad", "layer": layer})
        c, ema = detector.config, detector.ema
        x = np.concatenate(([np.nan if loss is None else loss, grad_norm], layer_norms))
        mean, std = ema.baseline()
        finite = np.isfinite(x)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = x / mean
            z = (x - mean) / np.maximum(std, c.rel_floor * np.abs(mean))
            spike = (finite & (ema.count >= c.warmup) & (mean > 0) & (ratio >= detector._ratio)
                     & (z >= c.z))  # fmt: skip
        for i in np.flatnonzero(spike):
            kind, layer = str(detector._kind[i]), str(detector._layer[i])
            events.append({"step": step, "kind": kind, "layer": layer, "baseline": float(mean[i])})
        clipped = np.where(spike, mean * detector._ratio, x)
        ema.update(np.where(finite, clipped, 0.0), finite)
    return events


@pytest.mark.parametrize("chunk", [1, 7, 50, 64, 65, 300])
@pytest.mark.parametrize("beta", [0.95, 0.5, 0.01])
def test_chunked_detection_equals_the_step_by_step_definition(chunk, beta):
    """Crafted series with spikes (single, repeated, on layers), level shifts, NaN/Inf,
    unknown losses and skipped steps: ``update_chunk`` over chunks of any size raises the
    events the one-step-at-a-time definition raises, with the same baselines."""
    rng = np.random.default_rng(7)
    steps, n = 600, 3
    loss = 1.0 + 0.05 * rng.standard_normal(steps)
    grad = 2.0 + 0.2 * rng.standard_normal(steps) ** 2
    layers = np.abs(1.0 + 0.1 * rng.standard_normal((steps, n)))
    loss[[60, 61, 200, 450]] *= [6, 6, 3, 9]
    grad[[100, 300, 301]] *= 30
    layers[[150, 151, 152], 1] *= 40
    loss[350:] += 2.0  # a level shift: absorbed, not a stream of spikes
    loss[400], grad[401], layers[402, 2] = np.nan, np.inf, np.nan
    nonfinite = np.zeros((steps, n))
    nonfinite[402, 2] = 3
    has_loss = rng.random(steps) > 0.1
    skipped = np.zeros(steps, dtype=bool)
    skipped[[30, 31, 250, 320]] = True
    config = SpikeConfig(beta=beta, warmup=10)

    expected, reference = [], SpikeDetector(["a", "b", "c"], config)
    for t in range(steps):
        known = float(loss[t]) if has_loss[t] else None
        expected += _reference(reference, t, known, grad[t], layers[t], nonfinite[t], skipped[t])

    chunked, detector = [], SpikeDetector(["a", "b", "c"], config)
    for lo in range(0, steps, chunk):
        part = slice(lo, lo + chunk)
        chunked += detector.update_chunk(
            np.arange(steps)[part], loss[part], has_loss[part], grad[part], layers[part],
            nonfinite[part], skipped[part],
        )  # fmt: skip

    assert any(e["kind"].endswith("spike") for e in expected)  # the series do spike
    assert [(e["step"], e["kind"]) for e in chunked] == [(e["step"], e["kind"]) for e in expected]
    for got, want in zip(chunked, expected, strict=True):
        if "baseline" in want:
            assert got["layer"] == want["layer"]
            assert got["baseline"] == pytest.approx(want["baseline"], rel=1e-9)
        if want["kind"] == "nonfinite_grad":
            assert got["layer"] == want["layer"]
    np.testing.assert_allclose(detector.ema.mean, reference.ema.mean, rtol=1e-9)
    np.testing.assert_allclose(detector.ema.var, reference.ema.var, rtol=1e-9)
    np.testing.assert_array_equal(detector.ema.count, reference.ema.count)
    assert sum(detector.counts.values()) == len(expected)


def test_a_layer_without_gradient_on_some_steps_does_not_spike_when_it_has_one():
    """Mixture of experts: an expert routed no tokens reads 0 (no gradient); those steps (60
    in a row here) stay out of its baseline, so its ordinary gradient when it is routed
    again is no spike."""
    rng = np.random.default_rng(0)
    steps = 200
    routed = (rng.random(steps) < 0.3) & ((np.arange(steps) < 40) | (np.arange(steps) >= 100))
    expert = np.where(routed, 0.013 * (1 + 0.1 * rng.standard_normal(steps)), 0.0)
    dense = 1.0 + 0.05 * rng.standard_normal(steps)
    layers = np.column_stack([dense, expert])
    events = _feed(SpikeDetector(["dense", "expert"]), np.ones(steps), dense, layers=layers)
    assert events == []
    expert[150] = 0.5  # a real spike of the expert, after many empty steps, is still seen
    layers = np.column_stack([dense, expert])
    events = _feed(SpikeDetector(["dense", "expert"]), np.ones(steps), dense, layers=layers)
    assert [(e["step"], e["layer"]) for e in events] == [(150, "expert")]


def test_rounding_noise_of_a_layer_cancelled_by_batchnorm_is_no_spike():
    """A conv bias followed by BatchNorm gets only float rounding noise as gradient (~1e-8
    next to 0.3 elsewhere), which jumps ~1000× between steps: a negligible share of the
    gradient is never a spike, while a jump of a layer that matters still is."""
    rng = np.random.default_rng(0)
    steps = 120
    dense = 0.3 * (1 + 0.1 * rng.standard_normal(steps))
    bias = 1.75e-8 * np.exp(0.3 * rng.standard_normal(steps))
    bias[80] = 1.65e-5  # 940× its baseline, still 5e-5 of the whole gradient
    layers = np.column_stack([dense, bias])
    total = np.sqrt((layers**2).sum(axis=1))
    assert _feed(SpikeDetector(["conv.weight", "conv.bias"]), np.ones(steps), total, layers) == []
    bias[80] = 0.03  # 10 % of the gradient: a real spike of that layer
    layers = np.column_stack([dense, bias])
    total = np.sqrt((layers**2).sum(axis=1))
    events = _feed(SpikeDetector(["conv.weight", "conv.bias"]), np.ones(steps), total, layers)
    assert [(e["step"], e["layer"]) for e in events] == [(80, "conv.bias")]
