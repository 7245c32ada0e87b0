"""Softmax-collapse signals at every step, from the logits entering cross-entropy.

Each training call of ``F.cross_entropy`` (also through ``nn.CrossEntropyLoss`` and inside a
model's ``forward``) adds its stats (``gradlens.functional.softmax.softmax_collapse_stats``,
sync-free, on at most ``max_rows`` evenly strided rows) to the step's accumulator:
sample-weighted means, maxima for the max entries. At
the end of the step the row joins a device buffer; every ``every`` steps the buffer goes to the
host asynchronously and the writer thread turns it into ``softmax`` rows, adding the drifts
(log Z and logit norm relative to the first step). Every ``cos_every`` steps the per-tensor
cosine between gradient and weights (the naive-loss-minimisation direction ⊥Grad removes) is
added, from the same pre-step hook that reads the gradients.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gradlens.functional.softmax import SOFTMAX_STATS, grad_weight_cosine, softmax_collapse_stats
from gradlens.store.schema import Coded

__all__ = ["SoftmaxCapture"]

_MAXIMA = {"max_logit_gap", "log_z_max"}
_IS_MAX = torch.tensor([name in _MAXIMA for name in SOFTMAX_STATS])
_COUNT = SOFTMAX_STATS.index("num_samples")

Sink = Callable[[Callable[[], dict[str, dict[str, Any]]]], None]


class SoftmaxCapture:
    """Accumulates per-step softmax stats on the device; hands rows to ``sink`` in blocks."""

    def __init__(
        self, sink: Sink, every: int = 50, cos_every: int = 10, max_rows: int = 256
    ) -> None:
        if cos_every < 0:
            raise ValueError(f"cos_every must be >= 0, got {cos_every}")
        self.sink = sink
        self.every = every
        self.cos_every = cos_every
        self.max_rows = max_rows
        self._sum: Tensor | None = None
        self._max: Tensor | None = None
        self._count: Tensor | None = None
        self._is_max: dict[torch.device, Tensor] = {}
        self._rows: list[Tensor] = []
        self._steps: list[int] = []
        self._cos: list[tuple[int, Tensor]] = []
        self._names: list[str] = []
        self._first: dict[str, float] = {}

    # -- hot path --------------------------------------------------------------------------------

    def observe(self, logits: Tensor, target: Any, ignore_index: int = -100) -> None:
        """One cross-entropy call's logits (training forward only; the caller checks)."""
        if not isinstance(target, Tensor) or target.is_floating_point():
            target = None  # soft labels: no per-sample "zero loss"/accuracy
        if logits.dim() > 2:  # cross-entropy's K-dim form (N, C, d1, …): classes at dim 1
            logits = logits.movedim(1, -1)
        logits, target = _strided_rows(logits, target, self.max_rows)
        stats = softmax_collapse_stats(logits, target, ignore_index=ignore_index)
        weight = stats[_COUNT]
        if self._sum is None or self._max is None or self._count is None:
            self._sum, self._max, self._count = stats * weight, stats, weight
        else:
            self._sum = self._sum + stats * weight
            self._max = torch.maximum(self._max, stats)
            self._count = self._count + weight

    def gradients(self, step: int, names: Sequence[str], params: Sequence[Tensor]) -> None:
        """At the pre-step hook: the gradient/weight cosines, every ``cos_every`` steps."""
        if self.cos_every and step % self.cos_every == 0:
            if any(hasattr(p, "placements") for p in params):
                return  # sharded (FSDP2): a local shard's cosine is not the tensor's
            self._names = list(names)
            cos = grad_weight_cosine(params, [p.grad for p in params], include_global=True)
            self._cos.append((step, cos))

    def end_step(self, step: int) -> None:
        if self._sum is not None and self._max is not None and self._count is not None:
            is_max = self._is_max.get(self._sum.device)
            if is_max is None:  # cached: no host-to-device copy per step
                is_max = self._is_max[self._sum.device] = _IS_MAX.to(self._sum.device)
            row = torch.where(is_max, self._max, self._sum / self._count.clamp_min(1.0))
            row[_COUNT] = self._count
            self._rows.append(row)
            self._steps.append(step)
        self._sum = self._max = self._count = None
        if len(self._rows) >= self.every:
            self.flush()

    def flush(self) -> None:
        if not self._rows and not self._cos:
            return
        rows = torch.stack(self._rows) if self._rows else None
        cos = torch.stack([c for _, c in self._cos]) if self._cos else None
        ready = None
        host_rows = rows.to("cpu", non_blocking=True) if rows is not None else None
        host_cos = cos.to("cpu", non_blocking=True) if cos is not None else None
        for tensor in (rows, cos):
            if tensor is not None and tensor.device.type == "cuda":
                ready = torch.cuda.Event()
                ready.record()
        steps, cos_steps = self._steps, [s for s, _ in self._cos]
        names = list(self._names)
        self._rows, self._steps, self._cos = [], [], []

        def job() -> dict[str, dict[str, Any]]:
            if ready is not None:
                ready.synchronize()
            return {"softmax": self._decode(steps, host_rows, cos_steps, host_cos, names)}

        self.sink(job)

    # -- writer thread ---------------------------------------------------------------------------

    def _decode(
        self,
        steps: list[int],
        rows: Tensor | None,
        cos_steps: list[int],
        cos: Tensor | None,
        names: list[str],
    ) -> dict[str, Any]:
        step_col: list[np.ndarray] = []
        metric_col: list[np.ndarray] = []
        layer_col: list[np.ndarray] = []
        values: list[np.ndarray] = []
        metrics = [*SOFTMAX_STATS, "log_z_drift", "logit_norm_growth", "grad_weight_cos"]
        layers = ["", *names]
        if rows is not None and len(steps):
            data = rows.double().numpy()
            table = {name: data[:, i] for i, name in enumerate(SOFTMAX_STATS)}
            for name in ("log_z_mean", "logit_norm"):
                if name not in self._first and np.isfinite(table[name]).any():
                    self._first[name] = float(table[name][np.isfinite(table[name])][0])
            table["log_z_drift"] = table["log_z_mean"] - self._first.get("log_z_mean", math.nan)
            first_norm = self._first.get("logit_norm", math.nan)
            table["logit_norm_growth"] = (
                table["logit_norm"] / first_norm if first_norm else (np.full(len(steps), math.nan))
            )
            for i, name in enumerate(metrics[:-1]):
                step_col.append(np.asarray(steps, dtype=np.int64))
                metric_col.append(np.full(len(steps), i))
                layer_col.append(np.zeros(len(steps), dtype=np.int64))
                values.append(table[name])
        if cos is not None and len(cos_steps):
            data = cos.double().numpy()  # (steps, layers + 1): per tensor, then global
            n = len(names)
            for j, step in enumerate(cos_steps):
                step_col.append(np.full(n + 1, step, dtype=np.int64))
                metric_col.append(np.full(n + 1, len(metrics) - 1))
                layer_col.append(np.array([*range(1, n + 1), 0]))
                values.append(data[j, : n + 1])
        if not values:
            return {"step": [], "metric": [], "layer": [], "value": []}
        return {
            "step": np.concatenate(step_col),
            "metric": Coded(np.concatenate(metric_col), metrics),
            "layer": Coded(np.concatenate(layer_col), layers),
            "value": np.concatenate(values),
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
