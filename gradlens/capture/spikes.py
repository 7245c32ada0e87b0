"""Online spike detection against an exponential moving baseline.

A value is a spike when it is both far above its baseline in ratio (practically large) and
in standard deviations of its own recent noise (statistically unusual):

    ratio = x / m  >= ratio_threshold     and     z = (x - m) / max(s, rel_floor * m) >= z_threshold

where ``m`` and ``s²`` are bias-corrected exponential moving mean and variance with decay
``beta``. Nothing is flagged during the first ``warmup`` finite values. A spike enters the
baseline clipped to the threshold (as SPAM clips spiking gradients), so one outlier does not
hide the next while a lasting level shift is absorbed within a few dozen steps.

Why these defaults (docs/spikes.md has the longer argument):
- SPAM (Huang et al. 2025) flags element-wise gradient spikes at g² > 5000·v, i.e. |g| more
  than ~70× its running RMS. A norm pools many elements: if a fraction f of a tensor's
  entries spike by s×, its norm grows by sqrt(1 + f(s²−1)); 1% of entries at 70× gives 7×.
  ``grad_ratio=5`` therefore catches SPAM-scale spikes touching ≥0.5% of the entries.
- A loss that doubles against its recent mean within one step is not optimisation noise for
  any objective we know of (``loss_ratio=2``); the z-test keeps noisy small-batch losses near
  zero from firing.
- ``beta=0.95`` (≈20-step memory) follows the loss quickly in early training;
  ``warmup=20`` lets the estimate settle, as SPAM waits ``grad_accu_steps=20``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["EmaBaseline", "SpikeConfig", "SpikeDetector"]


@dataclass(frozen=True)
class SpikeConfig:
    """Thresholds of the online detectors (see the module docstring for the reasoning)."""

    beta: float = 0.95
    warmup: int = 20
    loss_ratio: float = 2.0
    grad_ratio: float = 5.0
    layer_ratio: float = 5.0
    z: float = 6.0
    rel_floor: float = 0.05

    def __post_init__(self) -> None:
        if not 0.0 < self.beta < 1.0:
            raise ValueError(f"beta must be in (0, 1), got {self.beta}")
        if self.warmup < 1:
            raise ValueError(f"warmup must be >= 1, got {self.warmup}")
        for name in ("loss_ratio", "grad_ratio", "layer_ratio"):
            if getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be > 1, got {getattr(self, name)}")


class EmaBaseline:
    """Bias-corrected exponential moving mean and variance of k series at once."""

    def __init__(self, k: int, beta: float) -> None:
        self.beta = beta
        self.mean = np.zeros(k)
        self.var = np.zeros(k)
        self.count = np.zeros(k, dtype=np.int64)

    def baseline(self) -> tuple[np.ndarray, np.ndarray]:
        """Current (mean, std), NaN where nothing was seen yet."""
        with np.errstate(divide="ignore", invalid="ignore"):
            correction = 1.0 - self.beta ** self.count.astype(float)
            mean = np.where(self.count > 0, self.mean / correction, np.nan)
            var = np.where(self.count > 0, self.var / correction, np.nan)
        return mean, np.sqrt(np.maximum(var, 0.0))

    def update(self, x: np.ndarray, mask: np.ndarray) -> None:
        """Fold ``x`` into the series where ``mask`` holds."""
        mean, _ = self.baseline()
        prev = np.where(self.count > 0, mean, x)
        b = self.beta
        self.mean = np.where(mask, b * self.mean + (1 - b) * x, self.mean)
        self.var = np.where(mask, b * self.var + (1 - b) * (x - prev) ** 2, self.var)
        self.count = self.count + mask


class SpikeDetector:
    """Turns per-step values into event rows: spikes and non-finite values.

    Series: the loss, the global gradient norm and every layer's gradient norm, kept in one
    vector so a step costs a handful of numpy operations whatever the number of layers.
    """

    def __init__(self, layer_names: list[str], config: SpikeConfig | None = None) -> None:
        self.config = c = config or SpikeConfig()
        self.layers = list(layer_names)
        n = len(self.layers)
        self._kind = np.array(["loss_spike", "grad_spike"] + ["layer_grad_spike"] * n)
        self._metric = np.array(["loss"] + ["grad_norm"] * (n + 1))
        self._layer = np.array(["", "", *self.layers], dtype=object)
        self._ratio = np.array([c.loss_ratio, c.grad_ratio] + [c.layer_ratio] * n)
        self.ema = EmaBaseline(n + 2, c.beta)
        self.counts: Counter[str] = Counter()

    def update(
        self,
        step: int,
        loss: float | None,
        grad_norm: float,
        layer_norms: np.ndarray,
        nonfinite: np.ndarray,
        skipped: bool,
    ) -> list[dict[str, Any]]:
        """Process one step; returns the events it raised.

        ``loss`` is None when the step's loss is unknown; ``nonfinite`` counts NaN/Inf
        gradient entries per layer; ``skipped`` steps (AMP) only raise a ``skipped_step``.
        """
        events: list[dict[str, Any]] = []
        if skipped:
            detail = "optimizer step skipped (AMP GradScaler found inf/NaN gradients)"
            events.append(_event(step, "skipped_step", "grad_norm", "", grad_norm, detail=detail))
        else:
            if loss is not None and not np.isfinite(loss):
                events.append(_event(step, "nonfinite_loss", "loss", "", loss))
            bad = np.flatnonzero(nonfinite > 0)
            if len(bad):
                origin = int(bad[-1])  # nearest the output: where backprop went bad first
                name = self.layers[origin]
                detail = (
                    f"{len(bad)} of {len(self.layers)} tensors have NaN/Inf gradients; "
                    f"{name} is the one nearest the output"
                )
                events.append(
                    _event(
                        step,
                        "nonfinite_grad",
                        "grad_norm",
                        name,
                        float(nonfinite[origin]),
                        detail=detail,
                    )
                )
            x = np.concatenate(([np.nan if loss is None else loss, grad_norm], layer_norms))
            events += self._spikes(step, x)
        self.counts.update(e["kind"] for e in events)
        return events

    def _spikes(self, step: int, x: np.ndarray) -> list[dict[str, Any]]:
        c = self.config
        mean, std = self.ema.baseline()
        finite = np.isfinite(x)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = x / mean
            z = (x - mean) / np.maximum(std, c.rel_floor * np.abs(mean))
            spike = (
                finite
                & (self.ema.count >= c.warmup)
                & (mean > 0)
                & (ratio >= self._ratio)
                & (z >= c.z)
            )
        events = []
        if spike.any():
            events = [
                _event(
                    step,
                    str(self._kind[i]),
                    str(self._metric[i]),
                    str(self._layer[i]),
                    float(x[i]),
                    float(mean[i]),
                    float(ratio[i]),
                )
                for i in np.flatnonzero(spike)
            ]
        # Spikes enter the baseline clipped to the threshold; non-finite values not at all.
        clipped = np.where(spike, mean * self._ratio, x)
        self.ema.update(np.where(finite, clipped, 0.0), finite)
        return events


def _event(
    step: int,
    kind: str,
    metric: str,
    layer: str,
    value: float,
    baseline: float = float("nan"),
    ratio: float = float("nan"),
    detail: str = "",
) -> dict[str, Any]:
    return {
        "step": step,
        "kind": kind,
        "metric": metric,
        "layer": layer,
        "value": value,
        "baseline": baseline,
        "ratio": ratio,
        "detail": detail,
    }
