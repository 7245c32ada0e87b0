"""Writer-thread side of capture: device rows → long table rows and spike events."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gradlens.capture.chunk import Chunk, StepInfo
from gradlens.capture.spikes import SpikeDetector

__all__ = ["ChunkDecoder", "LiveStats"]

LAYER_METRICS = ("grad_norm", "param_norm", "update_norm", "update_ratio", "nonfinite")


@dataclass
class LiveStats:
    """The latest numbers, for the status line."""

    step: int = -1
    loss: float = float("nan")
    grad_norm: float = float("nan")
    spikes: int = 0
    nonfinite: int = 0


class _Columns:
    """Column lists that grow by whole arrays and concatenate once."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.parts: dict[str, list[Any]] = {n: [] for n in names}

    def add(self, **columns: Any) -> None:
        n = max(np.size(v) for v in columns.values())
        for name, value in columns.items():
            self.parts[name].append(np.broadcast_to(np.asarray(value), (n,)))

    def build(self) -> dict[str, np.ndarray]:
        return {
            name: np.concatenate(parts) if parts else np.array([])
            for name, parts in self.parts.items()
        }


class ChunkDecoder:
    """Turns chunks of one recorder into ``scalars``, ``layers`` and ``events`` rows.

    Stateful: it carries the spike baselines and, for manual updates, the previous step's
    parameter norms across chunks. Runs on the writer thread only.
    """

    def __init__(
        self,
        spikes: SpikeDetector,
        on_stats: Callable[[LiveStats], None] | None = None,
        metric_suffix: str = "",
    ) -> None:
        self.spikes = spikes
        self.suffix = metric_suffix
        self.on_stats = on_stats
        self.stats = LiveStats()
        self._prev: tuple[int, np.ndarray] | None = None  # (step, param norms) for lagged updates

    def __call__(self, chunk: Chunk) -> dict[str, dict[str, np.ndarray]]:
        chunk.wait()
        rows = chunk.rows.numpy().astype(np.float64)
        layout = chunk.layout
        names = np.array(layout.names, dtype=object)
        scalars = _Columns(("step", "metric", "index", "value"))
        layers = _Columns(("step", "layer", "metric", "value"))
        events: list[dict[str, Any]] = []
        for row, info in zip(rows, chunk.infos, strict=True):
            gnorm, pnorm = row[layout.block(0)], row[layout.block(1)]
            update, nonfinite = row[layout.block(2)], row[layout.block(3)]
            self._updates(layers, names, info, update, pnorm, layout.update_lag)
            if info.tail:
                continue
            skipped = info.skipped or row[1] > 0
            total = float(np.sqrt(np.sum(gnorm**2)))
            loss = float(row[0]) if info.has_loss else None
            for metric, value in _scalars(info, loss, total, skipped, nonfinite, row[2]):
                scalars.add(step=info.step, metric=metric + self.suffix, index=0, value=value)
            for i, lr in enumerate(info.lrs):
                scalars.add(step=info.step, metric="lr" + self.suffix, index=i, value=_float(lr))
            for metric, values in (
                ("grad_norm", gnorm),
                ("param_norm", pnorm),
                ("nonfinite", nonfinite),
            ):
                layers.add(step=info.step, layer=names, metric=metric, value=values)
            events += self.spikes.update(info.step, loss, total, gnorm, nonfinite, skipped)
            self.stats = LiveStats(
                info.step,
                loss if loss is not None else float("nan"),
                total,
                sum(v for k, v in self.spikes.counts.items() if k.endswith("spike")),
                sum(v for k, v in self.spikes.counts.items() if k.startswith("nonfinite")),
            )
        if self.on_stats is not None:
            self.on_stats(self.stats)
        out = {"scalars": scalars.build(), "layers": layers.build()}
        if events:
            out["events"] = {k: np.array([e[k] for e in events]) for k in events[0]}
        return out

    def _updates(
        self,
        layers: _Columns,
        names: np.ndarray,
        info: StepInfo,
        update: np.ndarray,
        pnorm: np.ndarray,
        lag: int,
    ) -> None:
        if lag == 0:
            step, base = info.step, pnorm
        else:  # the update seen now was applied after the previous step
            if self._prev is None:
                self._prev = (info.step, pnorm)
                return
            (step, base), self._prev = self._prev, (info.step, pnorm)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(base > 0, update / base, np.nan)
        layers.add(step=step, layer=names, metric="update_norm", value=update)
        layers.add(step=step, layer=names, metric="update_ratio", value=ratio)


def _scalars(
    info: StepInfo,
    loss: float | None,
    grad_norm: float,
    skipped: bool,
    nonfinite: np.ndarray,
    amp_scale: float,
) -> list[tuple[str, float]]:
    out = [("grad_norm", grad_norm), ("skipped", float(skipped))]
    out += [("nonfinite", float(np.sum(nonfinite))), ("time", info.wall_time)]
    if loss is not None:
        out.append(("loss", loss))
    if np.isfinite(amp_scale):
        out.append(("amp_scale", amp_scale))
    if info.step_time is not None and info.step_time > 0:
        out.append(("step_time", info.step_time))
        if info.samples:
            out.append(("samples_per_s", info.samples / info.step_time))
        if info.tokens:
            out.append(("tokens_per_s", info.tokens / info.step_time))
    return out


def _float(value: float | torch.Tensor) -> float:
    return float(value.item()) if isinstance(value, torch.Tensor) else float(value)
