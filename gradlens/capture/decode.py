"""Writer-thread side of capture: device rows → long table rows and spike events."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from gradlens.capture.chunk import Chunk, Layout, StepInfo
from gradlens.capture.signals import StepSignal, Tables
from gradlens.capture.spikes import SpikeDetector
from gradlens.instrument.live import LiveStats
from gradlens.store.schema import Coded

__all__ = ["ChunkDecoder"]


class ChunkDecoder:
    """Turns chunks of one recorder into ``scalars``, ``layers`` and ``events`` rows.

    Stateful: it carries the spike baselines and, for manual updates, the previous step's
    parameter norms across chunks. Runs on the writer thread only, vectorised over the chunk
    (its Python work holds the GIL the training thread needs).
    """

    def __init__(
        self,
        spikes: SpikeDetector,
        on_stats: Callable[[LiveStats], None] | None = None,
        serial: int = 0,
        rank: int = 0,
        signals: Sequence[StepSignal] = (),
    ) -> None:
        self.spikes = spikes
        self.signals = list(signals)  # beyond the built-ins: decoded by themselves
        self.on_stats = on_stats  # fed from the primary's rows only
        self.serial = serial  # rows taken while not primary are written as metric@serial
        self.rank = rank  # multi-process: only rank 0 writes the run-wide tables
        self.stats = LiveStats()
        self._prev: tuple[int, np.ndarray] | None = None  # (step, param norms) for lagged updates

    def __call__(self, chunk: Chunk) -> list[tuple[str, dict[str, Any]]]:
        chunk.wait()
        layout, infos = chunk.layout, chunk.infos
        rows = layout.unreduce(chunk.rows.numpy().astype(np.float64))
        steps = np.array([i.step for i in infos], dtype=np.int64)
        local_loss = layout.column(rows, "local_loss")
        ranks = _rank_rows(local_loss, infos, steps, self.rank) if layout.world > 1 else None
        if self.rank != 0:
            return [("ranks", ranks)] if ranks is not None else []
        full = np.array([not i.tail for i in infos])
        gnorm, pnorm = layout.column(rows, "grad_norm"), layout.column(rows, "param_norm")
        update, nonfinite = layout.column(rows, "update_norm"), layout.column(rows, "nonfinite")
        # NaN: not counted on the device; a tensor is flagged when its norm is not finite
        flags = (~np.isfinite(gnorm)).astype(np.float64)
        nonfinite = np.where(np.isnan(nonfinite), flags, nonfinite)
        sampled = np.array([i.sampled for i in infos], dtype=bool)  # θ and Δθ norms read
        layers = _LayerRows(np.array(layout.names, dtype=object))
        self._updates(layers, steps[sampled], update[sampled], pnorm[sampled], layout.update_lag)
        s, g, p, nf = steps[full], gnorm[full], pnorm[full], nonfinite[full]
        layers.add(s, "grad_norm", g)
        layers.add(s[sampled[full]], "param_norm", p[sampled[full]])
        layers.add(s, "nonfinite", nf)
        kept = [info for info in infos if not info.tail]
        total = np.sqrt(np.sum(g**2, axis=1))
        head = {
            name: layout.column(rows, name)[full]
            for name in ("loss", "skipped", "amp_scale", "grad_norm_clipped", "clip_coef")
        }
        skipped = np.array([i.skipped for i in kept], dtype=bool) | (head["skipped"] > 0)
        has_loss = np.array([i.has_loss for i in kept], dtype=bool)
        loss = head["loss"]
        scalars = self._scalars(kept, s, loss, has_loss, total, skipped, nf, head)
        events = self.spikes.update_chunk(s, loss, has_loss, total, g, nf, skipped)
        primary = [i for i, info in enumerate(kept) if info.primary]
        if primary:
            counts = self.spikes.counts
            last = primary[-1]
            self.stats = LiveStats(
                int(s[last]),
                float(loss[last]) if has_loss[last] else float("nan"),
                float(total[last]),
                sum(v for k, v in counts.items() if k.endswith("spike")),
                sum(v for k, v in counts.items() if k.startswith("nonfinite")),
            )
        if self.on_stats is not None and primary:
            self.on_stats(self.stats)
        out = [("scalars", scalars), ("layers", layers.build())]
        if ranks is not None:
            out.append(("ranks", ranks))
        if events:
            out.append(("events", {k: np.array([e[k] for e in events]) for k in events[0]}))
        for signal in self.signals:
            out += _signal_rows(signal, layout, rows, infos, steps)
        return out

    def _scalars(
        self,
        infos: list[StepInfo],
        steps: np.ndarray,
        loss: np.ndarray,
        has_loss: np.ndarray,
        total: np.ndarray,
        skipped: np.ndarray,
        nonfinite: np.ndarray,
        head: dict[str, np.ndarray],
    ) -> dict[str, Any]:
        step_time = np.array([np.nan if i.step_time is None else i.step_time for i in infos])
        samples = np.array([i.samples for i in infos], dtype=float)
        tokens = np.array([i.tokens for i in infos], dtype=float)
        timed = step_time > 0
        columns: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = []

        primary = np.array([i.primary for i in infos], dtype=bool)
        roles = ((primary, ""), (~primary, f"@{self.serial}"))

        def add(metric: str, mask: np.ndarray, values: np.ndarray, index: int = 0) -> None:
            for role, suffix in roles:
                picked = mask & role
                n = int(picked.sum())
                if n:
                    columns.append(
                        (metric + suffix, steps[picked], np.full(n, index), values[picked])
                    )

        everywhere = np.ones(len(steps), dtype=bool)
        add("loss", has_loss, loss)
        add("grad_norm", everywhere, total)
        add("skipped", everywhere, skipped.astype(float))
        add("nonfinite", everywhere, nonfinite.sum(axis=1) if nonfinite.size else 0 * total)
        add("time", everywhere, np.array([i.wall_time for i in infos]))
        amp_scale, coef = head["amp_scale"], head["clip_coef"]
        add("amp_scale", np.isfinite(amp_scale), amp_scale)
        add("grad_norm_clipped", np.isfinite(coef), head["grad_norm_clipped"])
        add("clip_coef", np.isfinite(coef), coef)
        add("step_time", timed, step_time)
        with np.errstate(divide="ignore", invalid="ignore"):
            add("samples_per_s", timed & (samples > 0), samples / step_time)
            add("tokens_per_s", timed & (tokens > 0), tokens / step_time)
        groups = max((len(i.lrs) for i in infos), default=0)
        for g in range(groups):
            lr = np.array([_float(i.lrs[g]) if g < len(i.lrs) else np.nan for i in infos])
            add("lr", np.isfinite(lr), lr, index=g)
        if not columns:
            return {
                "step": np.array([], dtype=np.int64),
                "metric": np.array([], dtype=object),
                "index": np.array([], dtype=np.int32),
                "value": np.array([]),
            }
        return {
            "step": np.concatenate([c[1] for c in columns]),
            "metric": Coded(
                np.concatenate([np.full(len(c[1]), i) for i, c in enumerate(columns)]),
                [c[0] for c in columns],
            ),
            "index": np.concatenate([c[2] for c in columns]).astype(np.int32),
            "value": np.concatenate([c[3] for c in columns]),
        }

    def _updates(
        self,
        layers: _LayerRows,
        steps: np.ndarray,
        update: np.ndarray,
        pnorm: np.ndarray,
        lag: int,
    ) -> None:
        if lag == 0:
            base = pnorm
        else:  # the update seen at row t was applied after the previous row's step
            prev_steps = np.concatenate(([-1 if self._prev is None else self._prev[0]], steps[:-1]))
            first = np.full((1, pnorm.shape[1]), np.nan) if self._prev is None else self._prev[1]
            base = np.concatenate((first[None, :] if first.ndim == 1 else first, pnorm[:-1]))
            self._prev = (int(steps[-1]), pnorm[-1])
            keep = prev_steps >= 0
            steps, update, base = prev_steps[keep], update[keep], base[keep]
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(base > 0, update / base, np.nan)
        layers.add(steps, "update_norm", update)
        layers.add(steps, "update_ratio", ratio)


class _LayerRows:
    """Long rows for the ``layers`` table, built from (steps × layers) blocks."""

    def __init__(self, names: np.ndarray) -> None:
        self.names = names
        self.parts: list[tuple[np.ndarray, str, np.ndarray]] = []

    def add(self, steps: np.ndarray, metric: str, values: np.ndarray) -> None:
        if len(steps):
            self.parts.append((steps, metric, values))

    def build(self) -> dict[str, Any]:
        n = len(self.names)
        if not self.parts or n == 0:
            return {
                "step": np.array([], dtype=np.int64),
                "layer": np.array([], dtype=object),
                "metric": np.array([], dtype=object),
                "value": np.array([]),
            }
        layer_codes = np.arange(n)
        return {
            "step": np.concatenate([np.repeat(s, n) for s, _, _ in self.parts]),
            "layer": Coded(
                np.concatenate([np.tile(layer_codes, len(s)) for s, _, _ in self.parts]),
                list(self.names),
            ),
            "metric": Coded(
                np.concatenate([np.full(len(s) * n, i) for i, (s, _, _) in enumerate(self.parts)]),
                [m for _, m, _ in self.parts],
            ),
            "value": np.concatenate([v.reshape(-1) for _, _, v in self.parts]),
        }


def _signal_rows(
    signal: StepSignal, layout: Layout, rows: np.ndarray, infos: list[StepInfo], steps: np.ndarray
) -> list[tuple[str, dict[str, Any]]]:
    """The primary optimizer's rows of an added signal, decoded by the signal itself."""
    picked = np.array([i.primary and not i.tail for i in infos], dtype=bool)
    if not picked.any():
        return []
    columns = {s.metric: layout.column(rows, s.metric)[picked] for s in signal.slots}
    tables: Tables = signal.decode(steps[picked], columns, layout.names)
    return list(tables.items())


def _rank_rows(
    local_loss: np.ndarray, infos: list[StepInfo], steps: np.ndarray, rank: int
) -> dict[str, Any]:
    """This rank's own loss, step time and throughput (they differ between ranks)."""
    columns: dict[str, list[Any]] = {"step": [], "rank": [], "metric": [], "value": []}
    for own, info, step in zip(local_loss, infos, steps, strict=True):
        if info.tail:
            continue
        values = {"loss": own if info.has_loss else np.nan, "step_time": info.step_time}
        if info.step_time:
            values["samples_per_s"] = info.samples / info.step_time if info.samples else None
            values["tokens_per_s"] = info.tokens / info.step_time if info.tokens else None
        for metric, value in values.items():
            if value is not None and np.isfinite(value):
                columns["step"].append(int(step))
                columns["rank"].append(rank)
                columns["metric"].append(metric)
                columns["value"].append(float(value))
    return columns


def _float(value: float | torch.Tensor) -> float:
    return float(value.item()) if isinstance(value, torch.Tensor) else float(value)
