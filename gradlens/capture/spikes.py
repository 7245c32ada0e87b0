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
- A layer spikes only while its gradient norm is at least ``layer_share`` (0.1 %) of the
  step's whole gradient norm: below that it changes nothing in training, and the bias of a
  layer followed by BatchNorm (cancelled by it) holds only rounding noise that jumps ~1000×.
- ``beta=0.95`` (≈20-step memory) follows the loss quickly in early training;
  ``warmup=20`` lets the estimate settle, as SPAM waits ``grad_accu_steps=20``.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["EmaBaseline", "SpikeConfig", "SpikeDetector"]

_BLOCK = 64  # rows scanned at once (b^−64 = 27 for b = 0.95; see EmaBaseline.scan)


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
    layer_share: float = 1e-3

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

    def scan(
        self, x: np.ndarray, mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """:meth:`baseline` before each row of ``x`` (rows × series) were the rows folded in
        one by one with :meth:`update`, without changing the state; and the states (mean, var,
        count) after each row, for :meth:`set`.

        The recurrence m ← b·m + (1−b)·x over the masked rows is, after n of them,
        bⁿ·(m₀ + (1−b)·Σ b^−nᵢ·xᵢ): two cumulative sums instead of a loop (at most
        ``_BLOCK`` rows, so b^−n stays small).
        """
        b = self.beta
        n = np.cumsum(mask, axis=0)  # updates up to and including each row
        grow, shrink = b ** -n.astype(float), b ** n.astype(float)
        sums = np.cumsum(np.where(mask, grow * x, 0.0), axis=0)
        mean_after = shrink * (self.mean + (1 - b) * sums)
        count = self.count + n - mask  # before each row
        before = np.vstack([self.mean[None, :], mean_after[:-1]])
        with np.errstate(divide="ignore", invalid="ignore"):
            correction = 1.0 - b ** count.astype(float)
            mean = np.where(count > 0, before / correction, np.nan)
            prev = np.where(count > 0, mean, x)
            sums = np.cumsum(np.where(mask, grow * (x - prev) ** 2, 0.0), axis=0)
            var_after = shrink * (self.var + (1 - b) * sums)
            var = np.vstack([self.var[None, :], var_after[:-1]])
            var = np.where(count > 0, var / correction, np.nan)
        return mean, np.sqrt(np.maximum(var, 0.0)), count, (mean_after, var_after, count + mask)

    def set(self, mean: np.ndarray, var: np.ndarray, count: np.ndarray) -> None:
        """The state :meth:`scan` gave for a row: as if the rows up to it were folded in."""
        self.mean, self.var, self.count = mean.copy(), var.copy(), count.astype(np.int64)


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
        # Rows per scan: at most _BLOCK, fewer for a small beta (b^−rows must stay finite).
        self._block = max(1, min(_BLOCK, int(250 / -math.log10(c.beta))))
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
        return self.update_chunk(
            np.array([step]),
            np.array([np.nan if loss is None else loss]),
            np.array([loss is not None]),
            np.array([grad_norm], dtype=float),
            np.asarray(layer_norms, dtype=float)[None, :],
            np.asarray(nonfinite, dtype=float)[None, :],
            np.array([skipped]),
        )

    def update_chunk(
        self,
        steps: np.ndarray,
        loss: np.ndarray,
        has_loss: np.ndarray,
        grad_norm: np.ndarray,
        layer_norms: np.ndarray,
        nonfinite: np.ndarray,
        skipped: np.ndarray,
    ) -> list[dict[str, Any]]:
        """:meth:`update` for each row of a chunk in turn, vectorised over the rows.

        The baselines of a block of rows are computed at once as if no row spiked; rows up to
        the first spike are then exact, that row is folded in with its spikes clipped, and
        the scan restarts after it (spikes are rare: usually one scan per chunk).
        """
        # A layer's zero norm (no gradient this step: an expert no token was routed to, a
        # head trained every other step) says nothing of its scale: it neither spikes nor
        # enters the baseline, or the next ordinary gradient would look like a spike.
        layers = np.where(layer_norms == 0, np.nan, layer_norms)
        x = np.column_stack([np.where(has_loss, loss, np.nan), grad_norm, layers])
        bad_loss = has_loss & ~np.isfinite(loss) & ~skipped
        bad_grad = (nonfinite > 0).any(axis=1) & ~skipped
        by_row: dict[int, list[dict[str, Any]]] = {}
        for t in np.flatnonzero(skipped | bad_loss | bad_grad):
            known = float(loss[t]) if has_loss[t] else None
            by_row[int(t)] = self._nonfinite_events(
                int(steps[t]), known, float(grad_norm[t]), nonfinite[t], bool(skipped[t])
            )
        live = np.flatnonzero(~skipped)  # a skipped step leaves the baselines as they are
        start = 0
        while start < len(live):
            rows = live[start : start + self._block]
            block = x[rows]
            finite = np.isfinite(block)
            mean, std, count, after = self.ema.scan(np.where(finite, block, 0.0), finite)
            spike = self._spiking(block, finite, mean, std, count)
            hits = np.flatnonzero(spike.any(axis=1))
            if not len(hits):
                self.ema.set(*(a[-1] for a in after))
                start += len(rows)
                continue
            i = int(hits[0])
            if i:
                self.ema.set(*(a[i - 1] for a in after))
            by_row.setdefault(int(rows[i]), []).extend(
                self._spike_events(int(steps[rows[i]]), block[i], mean[i], spike[i])
            )
            # Spikes enter the baseline clipped to the threshold; non-finite values not at all.
            clipped = np.where(spike[i], mean[i] * self._ratio, block[i])
            self.ema.update(np.where(finite[i], clipped, 0.0), finite[i])
            start += i + 1
        events = [e for t in sorted(by_row) for e in by_row[t]]
        self.counts.update(e["kind"] for e in events)
        return events

    def _nonfinite_events(
        self, step: int, loss: float | None, grad_norm: float, nonfinite: np.ndarray, skipped: bool
    ) -> list[dict[str, Any]]:
        if skipped:
            detail = "optimizer step skipped (AMP GradScaler found inf/NaN gradients)"
            return [_event(step, "skipped_step", "grad_norm", "", grad_norm, detail=detail)]
        events = []
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
            value = float(nonfinite[origin])
            events.append(_event(step, "nonfinite_grad", "grad_norm", name, value, detail=detail))
        return events

    def _spiking(
        self,
        x: np.ndarray,
        finite: np.ndarray,
        mean: np.ndarray,
        std: np.ndarray,
        count: np.ndarray,
    ) -> np.ndarray:
        """Which values spike against the baselines before them (rows × series)."""
        c = self.config
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = x / mean
            z = (x - mean) / np.maximum(std, c.rel_floor * np.abs(mean))
            spike = finite & (count >= c.warmup) & (mean > 0) & (ratio >= self._ratio) & (z >= c.z)
            # A layer whose gradient is a negligible share of the step's whole gradient (a bias
            # that a BatchNorm cancels holds float rounding noise) moves training by nothing
            # measurable: its jumps are not spikes.
            spike[:, 2:] &= x[:, 2:] >= c.layer_share * x[:, 1:2]
            return spike

    def _spike_events(
        self, step: int, x: np.ndarray, mean: np.ndarray, spike: np.ndarray
    ) -> list[dict[str, Any]]:
        return [
            _event(
                step,
                str(self._kind[i]),
                str(self._metric[i]),
                str(self._layer[i]),
                float(x[i]),
                float(mean[i]),
                float(x[i] / mean[i]),
            )
            for i in np.flatnonzero(spike)
        ]


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
