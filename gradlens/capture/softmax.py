"""Softmax-collapse signals, a :class:`~gradlens.capture.signals.StepSignal` of the step row.

Each training call of ``F.cross_entropy`` (also through ``nn.CrossEntropyLoss`` and inside a
model's ``forward``), or of ``F.nll_loss`` on ``log_softmax`` outputs (pytorch/examples'
MNIST style: the shift-invariant stats only), on a sampled step adds its stats
(``gradlens.functional.softmax.softmax_collapse_stats``, sync-free, on at most ``max_rows``
evenly strided rows) to the step's accumulator: sample-weighted means, maxima for the max
entries. At the primary optimizer's pre-step hook the accumulator becomes the signal's slots of
that step's row, with, every ``cos_every`` steps, the per-tensor cosine between gradient and
weights (the naive-loss-minimisation direction ⊥Grad removes). The writer thread turns them
into ``softmax`` rows, adding the drifts (log Z and logit norm relative to the first step).
The slots are this rank's own (``reduce="local"``): rank 0's logits are the ones written.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gradlens.capture.signals import Slot, StepSignal, StepView, Tables
from gradlens.functional.softmax import SOFTMAX_STATS, grad_weight_cosine, softmax_collapse_stats
from gradlens.instrument.distributed import is_sharded
from gradlens.store.schema import Coded

__all__ = ["SoftmaxSignal"]

_MAXIMA = {"max_logit_gap", "log_z_max"}
_IS_MAX = torch.tensor([name in _MAXIMA for name in SOFTMAX_STATS])
_COUNT = SOFTMAX_STATS.index("num_samples")
_COS, _COS_ALL = "grad_weight_cos", "grad_weight_cos_all"
_OBSERVED = ("cross_entropy", "nll_loss")


def _from_log_softmax(t: Tensor) -> bool:
    """``t`` is the output of ``log_softmax`` (as ``F.nll_loss``'s input in pytorch/examples'
    MNIST and word-language-model scripts)."""
    node = t.grad_fn
    return node is not None and node.name().startswith("LogSoftmaxBackward")


class SoftmaxSignal(StepSignal):
    """Accumulates the step's softmax stats on the device; they join the step's row."""

    slots = (
        *(Slot(name, reduce="local") for name in SOFTMAX_STATS),
        Slot(_COS, per_tensor=True, reduce="local"),
        Slot(_COS_ALL, reduce="local"),
    )

    def __init__(self, cos_every: int = 10, max_rows: int = 256, every: int = 1) -> None:
        if cos_every < 0:
            raise ValueError(f"cos_every must be >= 0, got {cos_every}")
        self.cos_every = cos_every
        self.every = every  # observe the cross-entropy calls of every this-many-th step
        self.max_rows = max_rows
        self._sum: Tensor | None = None
        self._max: Tensor | None = None
        self._count: Tensor | None = None
        self._is_max: dict[torch.device, Tensor] = {}
        self._first: dict[str, float] = {}  # writer thread: the drifts' reference values
        self.observed = 0  # loss calls observed so far

    # -- hot path --------------------------------------------------------------------------------

    def observe_call(
        self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], step: int
    ) -> None:
        """A loss call of step ``step``: a training cross-entropy of a sampled step is observed."""
        if name not in _OBSERVED or step % self.every:
            return
        logits = args[0] if args else kwargs.get("input")
        if (
            isinstance(logits, Tensor)
            and logits.requires_grad  # a training forward, not an evaluation loop
            and torch.is_grad_enabled()
        ):
            log_probs = name == "nll_loss"
            if log_probs and not _from_log_softmax(logits):
                return  # log-probabilities of some other model: not a softmax to read
            target = args[1] if len(args) > 1 else kwargs.get("target")
            self.observe(logits, target, kwargs.get("ignore_index", -100), log_probs)

    def observe(
        self, logits: Tensor, target: Any, ignore_index: int = -100, log_probs: bool = False
    ) -> None:
        """One cross-entropy call's logits, or ``log_softmax`` outputs of an ``nll_loss`` call
        (``log_probs``) (training forward only; the caller checks)."""
        if not isinstance(target, Tensor) or target.is_floating_point():
            target = None  # soft labels: no per-sample "zero loss"/accuracy
        if logits.dim() > 2:  # cross-entropy's K-dim form (N, C, d1, …): classes at dim 1
            logits = logits.movedim(1, -1)
        logits, target = _strided_rows(logits, target, self.max_rows)
        self.observed += 1
        stats = softmax_collapse_stats(
            logits, target, ignore_index=ignore_index, log_probs=log_probs
        )
        weight = stats[_COUNT]
        if self._sum is None or self._max is None or self._count is None:
            self._sum, self._max, self._count = stats * weight, stats, weight
        else:
            self._sum = self._sum + stats * weight
            self._max = torch.maximum(self._max, stats)
            self._count = self._count + weight

    def before(self, view: StepView) -> Mapping[str, Tensor]:
        """The primary optimizer's step takes the stats observed since the last one."""
        if not view.primary:
            return {}
        out: dict[str, Tensor] = {}
        if self._sum is not None and self._max is not None and self._count is not None:
            is_max = self._is_max.get(self._sum.device)
            if is_max is None:  # cached: no host-to-device copy per step
                is_max = self._is_max[self._sum.device] = _IS_MAX.to(self._sum.device)
            row = torch.where(is_max, self._max, self._sum / self._count.clamp_min(1.0))
            row[_COUNT] = self._count
            row = row.to(view.device, torch.float32, non_blocking=True)
            out.update({name: row[i : i + 1] for i, name in enumerate(SOFTMAX_STATS)})
        self._sum = self._max = self._count = None
        due = self.cos_every and view.step % self.cos_every == 0
        if due and not is_sharded(view.params):  # a shard's cosine is not the tensor's
            cos = grad_weight_cosine(view.params, view.grads(), include_global=True)
            cos = cos.to(view.device, torch.float32, non_blocking=True)
            out[_COS], out[_COS_ALL] = cos[:-1], cos[-1:]
        return out

    # -- writer thread ---------------------------------------------------------------------------

    def decode(
        self, steps: np.ndarray, columns: Mapping[str, np.ndarray], names: Sequence[str]
    ) -> Tables:
        step_col: list[np.ndarray] = []
        metric_col: list[np.ndarray] = []
        layer_col: list[np.ndarray] = []
        values: list[np.ndarray] = []
        metrics = [*SOFTMAX_STATS, "log_z_drift", "logit_norm_growth", _COS]
        seen = np.isfinite(columns["num_samples"])
        if seen.any():
            table = {name: columns[name][seen] for name in SOFTMAX_STATS}
            for name in ("log_z_mean", "logit_norm"):
                if name not in self._first and np.isfinite(table[name]).any():
                    self._first[name] = float(table[name][np.isfinite(table[name])][0])
            table["log_z_drift"] = table["log_z_mean"] - self._first.get("log_z_mean", math.nan)
            first_norm = self._first.get("logit_norm", math.nan)
            n_seen = int(seen.sum())
            table["logit_norm_growth"] = (
                table["logit_norm"] / first_norm if first_norm else np.full(n_seen, math.nan)
            )
            for i, name in enumerate(metrics[:-1]):
                step_col.append(steps[seen])
                metric_col.append(np.full(n_seen, i))
                layer_col.append(np.zeros(n_seen, dtype=np.int64))
                values.append(table[name])
        cos = np.concatenate([columns[_COS_ALL][:, None], columns[_COS]], axis=1)
        at = np.isfinite(cos[:, 0])  # (steps, 1 + layers): global, then per tensor
        if at.any():
            n = cos.shape[1]
            step_col.append(np.repeat(steps[at], n))
            metric_col.append(np.full(int(at.sum()) * n, len(metrics) - 1))
            layer_col.append(np.tile(np.arange(n), int(at.sum())))
            values.append(cos[at].reshape(-1))
        if not values:
            return {}
        return {
            "softmax": {
                "step": np.concatenate(step_col),
                "metric": Coded(np.concatenate(metric_col), metrics),
                "layer": Coded(np.concatenate(layer_col), ["", *names]),
                "value": np.concatenate(values),
            }
        }


def _strided_rows(
    logits: Tensor, target: Tensor | None, limit: int
) -> tuple[Tensor, Tensor | None]:
    """At most ``limit`` rows, evenly strided (no RNG: training's random stream is untouched).

    Fractions and means over a strided subset estimate those over the batch; the cost of the
    per-step signals stays bounded for language models with batch × sequence rows.
    """
    rows = logits.reshape(-1, logits.shape[-1])
    if rows.shape[0] <= limit:
        return logits, target
    stride = -(-rows.shape[0] // limit)
    picked = rows[::stride]
    if target is not None:
        target = target.reshape(-1)[::stride]
    return picked, target
