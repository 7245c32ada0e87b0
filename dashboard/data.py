"""What the dashboard reads from a run: a few columns at a time, cached until the files change.

Every cached value is keyed by the run, the table and the table's file signature (names, sizes,
mtimes), so a run still being written is re-read as soon as a new segment lands, and a
finished run is read once. Layer metrics are held as a dense layers × steps matrix: heatmap
buckets, zooms and one layer's curve are then slices of memory, not reads.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pyarrow as pa

from gradlens.dashboard.downsample import bucket_max
from gradlens.report.evaluation import train_loss_at
from gradlens.report.sampling import Sampling, sampling_of
from gradlens.store import Run
from gradlens.store.columns import (
    Where,
    distinct,
    file_info,
    read_columns,
    signature,
    table_files,
)

__all__ = ["Cache", "LayerMatrix", "RunData", "build_layer_matrix"]

T = TypeVar("T")
LAYER_CURVES = ("grad_norm", "update_ratio", "param_norm")
READ_PARTS = 4  # a layer matrix is read as this many groups of layers, in parallel
_READERS = ThreadPoolExecutor(READ_PARTS, thread_name_prefix="gradlens-read")


class Cache:
    """A thread-safe LRU of computed values, bounded by their approximate size in bytes."""

    def __init__(self, max_bytes: int = 1 << 30) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()
        self._bytes = 0
        self._queued: set[Hashable] = set()
        self._worker = threading.Semaphore(1)

    def get(self, key: Hashable, compute: Callable[[], T]) -> T:
        """The value for ``key``, computed (outside the lock) on a miss."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key][0]
        value = compute()
        size = _nbytes(value)
        with self._lock:
            if key not in self._items:
                self._items[key] = (value, size)
                self._bytes += size
            while self._bytes > self.max_bytes and len(self._items) > 1:
                _, (_, dropped) = self._items.popitem(last=False)
                self._bytes -= dropped
        return value

    def prefetch(self, key: Hashable, compute: Callable[[], object], delay: float = 0.0) -> None:
        """Compute ``key`` on a background thread (one at a time) unless cached or queued.

        ``delay``: seconds to wait first, so the request that asked for the prefetch builds
        and sends its answer before the prefetch competes with it for the interpreter.
        """
        with self._lock:
            if key in self._items or key in self._queued:
                return
            self._queued.add(key)

        def work() -> None:
            if delay > 0:
                time.sleep(delay)
            with self._worker:
                try:
                    self.get(key, compute)
                except Exception:  # a prefetch is a guess; the real request will report it
                    pass
                finally:
                    with self._lock:
                        self._queued.discard(key)

        threading.Thread(target=work, name="gradlens-prefetch", daemon=True).start()

    def busy(self) -> bool:
        """True while prefetches are queued or running."""
        with self._lock:
            return bool(self._queued)

    def peek(self, key: Hashable) -> Any | None:
        """The cached value for ``key``, or None (never computes)."""
        with self._lock:
            item = self._items.get(key)
            return item[0] if item else None


@dataclass(frozen=True)
class LayerMatrix:
    """One per-layer metric as ``values[layer, step]`` (float32, NaN where not recorded)."""

    metric: str
    layers: list[str]
    steps: np.ndarray
    values: np.ndarray

    def window(self, lo: float | None = None, hi: float | None = None) -> LayerMatrix:
        """The columns with ``lo <= step <= hi`` (either bound may be None)."""
        start = 0 if lo is None else int(np.searchsorted(self.steps, lo, side="left"))
        end = len(self.steps) if hi is None else int(np.searchsorted(self.steps, hi, "right"))
        return LayerMatrix(
            self.metric, self.layers, self.steps[start:end], self.values[:, start:end]
        )

    def heatmap(self, buckets: int = 500) -> pd.DataFrame:
        """Layers × step buckets (columns: first step of each bucket), max of each bucket."""
        values, starts = bucket_max(self.values, buckets)
        return pd.DataFrame(values, index=self.layers, columns=self.steps[starts])

    def last_steps(self, buckets: int = 500) -> np.ndarray:
        """The last step of each of ``heatmap(buckets)``'s buckets."""
        _, starts = bucket_max(self.values[:1], buckets)
        ends = np.append(starts[1:], len(self.steps)) - 1
        return self.steps[ends] if len(self.steps) else np.empty(0, np.int64)

    def relative(self, beta: float = 0.95) -> LayerMatrix:
        """Each value over its layer's baseline: the EMA of the layer's earlier values.

        The baseline is the spike detector's (``gradlens.capture.spikes``): a bias-corrected
        exponential moving average with decay ``beta`` of the finite values before the step, so
        a spike of 34× its layer's usual norm reads 34 here whatever the layer's scale.
        Steps before a layer's first finite value, and non-positive baselines, are NaN.
        """
        if not 0.0 < beta < 1.0:
            raise ValueError(f"beta must be in (0, 1), got {beta}")
        values = self.values.T  # steps × layers, a view
        frame = pd.DataFrame(values, copy=False)
        if not np.isfinite(values).all():
            frame = frame.where(np.isfinite(values))
        mean = frame.ewm(alpha=1.0 - beta, adjust=True, ignore_na=True).mean().to_numpy()
        base = np.empty_like(mean)
        base[0] = np.nan
        base[1:] = mean[:-1]  # each step against the steps before it
        positive = base > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            np.divide(values, base, out=base)
        base[~positive] = np.nan
        ratio = base
        return LayerMatrix(
            f"{self.metric}/baseline", self.layers, self.steps, ratio.T.astype(np.float32)
        )

    def row(self, layer: str) -> pd.DataFrame:
        """One layer's curve: columns step, value."""
        i = self.layers.index(layer)
        return pd.DataFrame({"step": self.steps, "value": self.values[i].astype(np.float64)})


def build_layer_matrix(table: pa.Table, metric: str) -> LayerMatrix:
    """A ``LayerMatrix`` from rows with columns step, layer (dictionary-coded), value.

    Layers keep the order they are first seen in; a repeated (layer, step) keeps its last value.
    Batches holding one layer over a contiguous step range (the compacted layout) are copied
    as whole row slices; anything else is scattered value by value.
    """
    order: dict[str, int] = {}
    batches = []  # (layer codes or one code, steps, values, contiguous)
    known: tuple[pa.Array, np.ndarray] | None = None  # the last dictionary and its mapping
    for batch in table.select(["step", "layer", "value"]).to_batches():
        if batch.num_rows == 0:
            continue
        layer = batch.column(1)
        if not pa.types.is_dictionary(layer.type):
            layer = layer.dictionary_encode()
        if known is None or not layer.dictionary.equals(known[0]):  # batches share theirs
            names = layer.dictionary.to_pylist()
            codes_of = [order.setdefault(n, len(order)) for n in names]
            known = (layer.dictionary, np.array(codes_of, dtype=np.int32))
        mapping = known[1]
        steps = np.asarray(batch.column(0).to_numpy(), dtype=np.int64)
        values = np.asarray(batch.column(2).to_numpy(zero_copy_only=False), dtype=np.float32)
        if len(mapping) == 1:  # one layer (a compacted row group): no per-row codes
            codes = np.full(1 if _contiguous(steps) else len(steps), mapping[0], np.int32)
        else:
            codes = mapping[layer.indices.to_numpy(zero_copy_only=False)]
            if bool((codes == codes[0]).all()) and _contiguous(steps):
                codes = codes[:1]
        batches.append((codes, steps, values, len(codes) == 1 and len(steps) > 1))
    if not batches:
        return LayerMatrix(metric, list(order), np.empty(0, np.int64), np.empty((len(order), 0)))
    columns, rank = _columns([(b[1], b[3]) for b in batches])
    matrix = np.full((len(order), len(columns)), np.nan, dtype=np.float32)
    for codes, steps, values, run in batches:
        if run:
            start = int(rank(steps[:1])[0])
            matrix[codes[0], start : start + len(steps)] = values
        else:
            matrix[codes, rank(steps)] = values
    return LayerMatrix(metric, list(order), columns, matrix)


class RunData:
    """Cached reads of one run for the pages; cheap to create per request.

    Example:
        >>> data = RunData(catalog.open("mlp"), cache)           # doctest: +SKIP
        >>> data.layer_matrix("grad_norm").heatmap(500)
    """

    def __init__(self, run: Run, cache: Cache) -> None:
        self.run = run
        self.cache = cache

    @property
    def name(self) -> str:
        return self.run.path.name

    def files(self, table: str) -> list[Path]:
        return table_files(self.run.path, table)

    def has(self, table: str) -> bool:
        return bool(self.files(table))

    def key(self, table: str, *what: Hashable) -> tuple[Hashable, ...]:
        """A cache key that changes when ``table``'s files change."""
        return (str(self.run.path), table, signature(self.files(table)), *what)

    def metrics(self, table: str) -> list[str]:
        """Metric names in ``table``, in the order first seen."""
        files = self.files(table)
        return self.cache.get(self.key(table, "metrics"), lambda: distinct(files, "metric"))

    def layers(self, table: str = "layers") -> list[str]:
        """Layer names in ``table``, in the order first seen (the model's order)."""
        files = self.files(table)
        return self.cache.get(self.key(table, "layers"), lambda: distinct(files, "layer"))

    def series(
        self, table: str, metric: str, layer: str | None = None, index: int | None = None
    ) -> pd.DataFrame:
        """One metric's values over steps: columns step, value, time (s since start)."""
        where: dict[str, Any] = {"metric": metric}
        if layer is not None:
            where["layer"] = layer
        if index is not None:
            where["index"] = index

        def read() -> pd.DataFrame:
            frame = self._frame(table, ["step", "value"], where)
            return frame.sort_values("step", kind="stable", ignore_index=True)

        frame = self.cache.get(self.key(table, "series", tuple(sorted(where.items()))), read)
        return frame if table == "scalars" and metric == "time" else self.with_time(frame)

    def scalar(self, metric: str, index: int = 0) -> pd.DataFrame:
        """A scalars metric (param group ``index`` for ``lr``)."""
        return self.series("scalars", metric, index=index)

    def groups(self, metric: str, table: str = "scalars") -> pd.DataFrame:
        """A metric of every param group (``index``): columns step, value, series, time."""

        def read() -> pd.DataFrame:
            frame = self._frame(table, ["step", "index", "value"], {"metric": metric})
            frame = frame.sort_values(["index", "step"], kind="stable", ignore_index=True)
            return frame.assign(series=[f"group {i}" for i in frame.pop("index")])

        return self.with_time(self.cache.get(self.key(table, "groups", metric), read))

    def evaluations(self, metric: str = "eval_loss") -> pd.DataFrame:
        """An eval metric of every loader: columns step, value, series (``loader 0``… or
        ``eval`` when there is one loader), time; empty when the run has none."""
        if not self.has("scalars") or metric not in self.metrics("scalars"):
            return pd.DataFrame()
        frame = self.groups(metric)
        loaders = frame["series"].nunique()
        return frame.assign(
            series=[
                "eval" if loaders == 1 else s.replace("group", "loader") for s in frame["series"]
            ]
        )

    def train_loss_at_evals(self) -> pd.DataFrame:
        """The training loss at each evaluation step, as the report defines it
        (``gradlens.report.evaluation.train_loss_at``): columns step, value, time."""
        evals = self.evaluations("eval_loss")
        if evals.empty:
            return pd.DataFrame()
        steps = np.unique(evals["step"].to_numpy(dtype=np.int64))

        def compute() -> pd.DataFrame:
            loss = self.scalar("loss")
            series = pd.Series(loss["value"].to_numpy(), index=loss["step"].to_numpy())
            return pd.DataFrame({"step": steps, "value": train_loss_at(series, steps)})

        key = (*self.key("scalars", "train_at_evals"), len(steps))
        return self.with_time(self.cache.get(key, compute))

    def user_metrics(self) -> pd.DataFrame:
        """The script's own scalars (``gradlens.log``): columns step, metric, value, time."""
        if not self.has("user"):
            return pd.DataFrame()

        def read() -> pd.DataFrame:
            frame = self._frame("user", ["step", "metric", "value"], None)
            return frame.sort_values("step", kind="stable", ignore_index=True)

        return self.with_time(self.cache.get(self.key("user", "all"), read))

    def with_time(self, frame: pd.DataFrame) -> pd.DataFrame:
        """``frame`` with a ``time`` column: seconds since start at each step (NaN if unknown)."""
        clock = self.series("scalars", "time", index=0) if self.has("scalars") else None
        out = frame.copy()
        if clock is None or clock.empty or out.empty:
            out["time"] = np.nan
        else:
            out["time"] = np.interp(out["step"], clock["step"], clock["value"])
        return out

    def layer_matrix(self, metric: str) -> LayerMatrix:
        """A per-layer metric as a dense matrix (read once per file change)."""
        return self.cache.get(self.key("layers", "matrix", metric), self._matrix_reader(metric))

    def relative_matrix(self, metric: str) -> LayerMatrix:
        """``layer_matrix(metric)`` over each layer's EMA baseline (the run's spike ``beta``)."""
        beta = self.spike_beta()
        return self.cache.get(
            self.key("layers", "relative", metric, beta),
            lambda: self.layer_matrix(metric).relative(beta),
        )

    def sampling(self) -> Sampling:
        """The metrics this run recorded every few steps, by table (``param_every``,
        ``softmax_every``, ``cos_every`` of its config); empty for a run read every step."""
        present = {t: self.metrics(t) for t in ("layers", "softmax") if self.has(t)}
        return sampling_of(self.run.meta, present)

    def spike_beta(self) -> float:
        """The EMA decay of the run's spike detector (meta config), 0.95 by default."""
        config = self.run.meta.get("config")
        spikes = config.get("spikes") if isinstance(config, dict) else None
        beta = spikes.get("beta") if isinstance(spikes, dict) else None
        if isinstance(beta, int | float) and 0.0 < float(beta) < 1.0:
            return float(beta)
        return 0.95

    def prefetch_layer_matrices(self, metrics: Sequence[str], delay: float = 0.3) -> None:
        """Build these matrices in the background, so switching to them later is instant
        (after ``delay`` seconds: the page asking for them is answered first)."""
        for metric in metrics:
            key = self.key("layers", "matrix", metric)
            self.cache.prefetch(key, self._matrix_reader(metric), delay)

    def _matrix_reader(self, metric: str) -> Callable[[], LayerMatrix]:
        files = self.files("layers")
        columns = ["step", "layer", "value"]

        def read() -> LayerMatrix:
            names = self.layers()
            if len(names) < 2 * READ_PARTS:
                return build_layer_matrix(read_columns(files, columns, {"metric": metric}), metric)
            # a few reads of consecutive layers at once: Parquet decoding releases the GIL
            # (200 layers x 100k steps: ~195 -> ~130 ms on 2 cores); the parts keep the
            # layers' first-seen order, so the matrix rows are the same
            cuts = [len(names) * i // READ_PARTS for i in range(READ_PARTS + 1)]
            parts = [names[lo:hi] for lo, hi in itertools.pairwise(cuts)]
            tables = _READERS.map(
                lambda part: read_columns(files, columns, {"metric": metric, "layer": part}), parts
            )
            return build_layer_matrix(pa.concat_tables(list(tables)), metric)

        return read

    def layer_curves(self, layer: str, metrics: Sequence[str] = LAYER_CURVES) -> pd.DataFrame:
        """One layer's metrics: columns step, metric, value, time."""
        parts = []
        for metric in metrics:
            matrix = self.cache.peek(self.key("layers", "matrix", metric))
            if isinstance(matrix, LayerMatrix) and layer in matrix.layers:
                part = matrix.row(layer)
            else:
                part = self.series("layers", metric, layer=layer)[["step", "value"]]
            parts.append(part.assign(metric=metric))
        frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
        return self.with_time(frame[["step", "metric", "value"]])

    def events(self) -> pd.DataFrame:
        """The events table (spikes, non-finite values), strings decoded."""
        if not self.has("events"):
            return self.run.table("events")
        return self.cache.get(self.key("events", "all"), lambda: self.run.table("events"))

    def table(
        self, table: str, where: Where | None = None, steps: tuple[int, int] | None = None
    ) -> pd.DataFrame:
        """A (small) probe table's rows, all columns, strings decoded, sorted by step."""
        if not self.has(table):
            return pd.DataFrame()
        where_key = tuple(sorted((where or {}).items()))

        def read() -> pd.DataFrame:
            files = self.files(table)
            columns = list(file_info(files[0]).schema.names) if files else []
            frame = self._frame(table, columns, where, steps)
            return frame.sort_values("step", kind="stable", ignore_index=True)

        return self.cache.get(self.key(table, "table", where_key, steps), read)

    def steps_of(self, table: str) -> list[int]:
        """The distinct steps recorded in ``table`` (probe tables are sparse in steps)."""
        if not self.has(table):
            return []
        files = self.files(table)

        def read() -> list[int]:
            steps = read_columns(files, ["step"]).column("step").to_numpy()
            return [int(s) for s in np.unique(steps)]

        return self.cache.get(self.key(table, "steps"), read)

    def _frame(
        self,
        table: str,
        columns: Sequence[str],
        where: Where | None,
        steps: tuple[int, int] | None = None,
    ) -> pd.DataFrame:
        arrow = read_columns(self.files(table), columns, where, steps)
        decoded = [
            col.cast(col.type.value_type) if pa.types.is_dictionary(col.type) else col
            for col in arrow.columns
        ]
        return pa.table(decoded, names=arrow.column_names).to_pandas()


def _contiguous(steps: np.ndarray) -> bool:
    """True when ``steps`` are consecutive integers, first to last (one row per step)."""
    if len(steps) < 2 or steps[-1] - steps[0] + 1 != len(steps):
        return False
    return bool((steps[1:] > steps[:-1]).all())  # increasing over exactly that many integers


def _columns(
    parts: list[tuple[np.ndarray, bool]],
) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """Sorted distinct steps of ``parts`` (steps, is a contiguous run) and step → column."""
    lo = min(int(steps.min()) for steps, _ in parts)
    hi = max(int(steps.max()) for steps, _ in parts)
    rows = sum(len(steps) for steps, _ in parts)
    if hi - lo + 1 > 4 * rows:  # sparse steps: sort
        columns = np.unique(np.concatenate([steps for steps, _ in parts]))
        return columns, lambda steps: np.searchsorted(columns, steps)
    present = np.zeros(hi - lo + 1, dtype=bool)
    for steps, run in parts:
        if run:
            present[steps[0] - lo : steps[-1] - lo + 1] = True
        else:
            present[steps - lo] = True
    position = np.cumsum(present) - 1
    return np.flatnonzero(present) + lo, lambda steps: position[steps - lo]


def _nbytes(value: object) -> int:
    if isinstance(value, LayerMatrix):
        return int(value.values.nbytes + value.steps.nbytes)
    if isinstance(value, pd.DataFrame):
        return int(value.memory_usage(index=True, deep=False).sum())
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, go.Figure):  # a cached chart: its arrays, about 40 bytes a point
        points = sum(len(x) for t in value.data if (x := getattr(t, "x", None)) is not None)
        return 4096 + 40 * points
    return 1024
