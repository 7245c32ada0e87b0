"""Background writer: turns queued rows into Parquet segment files off the training thread.

The training thread only enqueues. Jobs are callables run on the writer thread (so decoding
and spike detection happen there too) that return rows per table. Rows are written as one
segment per table as soon as they arrive, but at most once per ``min_interval`` seconds (a
fast loop flushing every few milliseconds would otherwise write thousands of tiny files and
hold the GIL the training thread needs). ``close()`` drains, writes the tail and compacts.
"""

from __future__ import annotations

import functools
import itertools
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gradlens.store.schema import to_arrow
from gradlens.store.segments import (
    compact_name,
    readable_files,
    segment_number,
    segment_writer,
    write_segment,
)

__all__ = [
    "COMPACT_KEYS",
    "ROW_GROUP_MAX",
    "ROW_GROUP_MIN",
    "Rows",
    "RunWriter",
    "compact_table",
    "sorted_for_reads",
    "write_grouped",
]

# table name -> column name -> values
Rows = Mapping[str, Mapping[str, Any]]
Job = Callable[[], Rows]

_STOP = object()


class RunWriter:
    """Writes a run's tables from a background thread.

    Example:
        >>> w = RunWriter(path)                                   # doctest: +SKIP
        >>> w.write("scalars", {"step": [0], "metric": ["loss"], "index": [0], "value": [1.0]})
        >>> w.close()
    """

    def __init__(
        self,
        run_dir: Path,
        strict: bool | None = None,
        min_interval: float = 1.0,
        tag: str = "",
    ) -> None:
        """``tag`` (e.g. ``"r1"``) names this writer's files when several processes write."""
        self.run_dir = Path(run_dir)
        self.min_interval = min_interval
        self.tag = tag
        self.strict = os.environ.get("GRADLENS_STRICT") == "1" if strict is None else strict
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._next_segment: dict[str, int] = {}
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="gradlens-writer", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Run ``job`` on the writer thread and write the rows it returns."""
        if not self._closed:
            self._queue.put(job)

    def write(self, table: str, columns: Mapping[str, Any]) -> None:
        """Queue rows for ``table`` (columns of equal length)."""
        self.submit(lambda: {table: columns})

    def sync(self, timeout: float | None = None) -> None:
        """Block until everything queued so far is on disk."""
        done = threading.Event()
        self._queue.put(done)
        done.wait(timeout)

    def close(self, compact: bool = True) -> None:
        """Drain the queue, write the last segments and (optionally) compact each table."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join()
        if compact:
            for folder in sorted(p for p in self.run_dir.iterdir() if p.is_dir()):
                self._guard(functools.partial(compact_table, folder, self.tag))
        if self._error is not None and self.strict:
            raise self._error

    # -- writer thread -------------------------------------------------------------------------

    def _loop(self) -> None:
        pending: dict[str, list[pa.Table]] = {}
        last_write = 0.0
        stop = False
        while not stop:
            timeout = None
            if pending:  # rows wait at most min_interval before they are written
                timeout = max(0.0, last_write + self.min_interval - time.monotonic())
            try:
                items = [self._queue.get(timeout=timeout)]
            except queue.Empty:
                items = []
            while True:  # drain whatever else is waiting
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            waiters: list[threading.Event] = []
            for item in items:
                if item is _STOP:
                    stop = True
                elif isinstance(item, threading.Event):
                    waiters.append(item)
                else:
                    self._guard(functools.partial(self._run_job, item, pending))
            due = time.monotonic() - last_write >= self.min_interval
            if pending and (due or waiters or stop):
                for table, parts in pending.items():
                    self._guard(functools.partial(self._write, table, parts))
                pending = {}
                last_write = time.monotonic()
            for waiter in waiters:
                waiter.set()

    @staticmethod
    def _run_job(job: Job, pending: dict[str, list[pa.Table]]) -> None:
        for table, columns in job().items():
            arrow = to_arrow(table, columns)
            if arrow.num_rows:
                pending.setdefault(table, []).append(arrow)

    def _write(self, table: str, parts: list[pa.Table]) -> None:
        folder = self.run_dir / table
        if table not in self._next_segment:
            self._next_segment[table] = readable_files(folder, self.tag)[1] + 1
        number = self._next_segment[table]
        write_segment(pa.concat_tables(parts), folder, number, self.tag)
        self._next_segment[table] = number + 1

    def _guard(self, action: Callable[[], object]) -> None:
        """Run ``action``; a failure is reported once and never stops training."""
        try:
            action()
        except Exception as exc:  # gradlens must not take the training down with it
            if self._error is None:
                self._error = exc
                print(f"gradlens: writer error: {type(exc).__name__}: {exc}", file=sys.stderr)


# Compacted files are laid out for readers that want one metric (and one layer) at a time,
# like the dashboard: rows sorted by these keys then step, and every run of rows with the same
# keys written as its own row groups, so row-group statistics alone tell a reader which groups
# to skip. String keys sort by name except ``layer``, which keeps the order layers were first
# seen in (the model's order). Tables not listed here are sorted by step only.
COMPACT_KEYS: dict[str, tuple[str, ...]] = {
    "scalars": ("metric", "index"),
    "layers": ("metric", "layer"),
    "hessian": ("metric", "layer", "index"),
    "collapse": ("metric",),
    "softmax": ("metric", "layer"),
}
ROW_GROUP_MAX = 1 << 17  # rows; a longer run of equal keys is split (step ranges stay prunable)
ROW_GROUP_MIN = 1 << 13  # runs shorter than this are packed together into one group


def compact_table(folder: Path, writer: str = "") -> None:
    """Merge a table's files into one compact file sorted for reads, then delete the parts.

    Crash-safe at every point: the compact file appears atomically and covers exactly the
    segments numbered up to its own number (see ``segments.readable_files``). The layout is
    described at ``COMPACT_KEYS``; reading the file back with ``Run.table`` still gives rows
    sorted by step.
    """
    files, highest = readable_files(folder, writer)
    if len(files) <= 1:
        return
    schema = pq.read_schema(files[0])
    strings = [f.name for f in schema if pa.types.is_string(f.type)]
    tables = [pq.read_table(f, read_dictionary=strings) for f in files]  # strings stay coded
    merged = pa.concat_tables(tables, promote_options="default")
    target = pa.schema(
        [
            f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type) else f
            for f in merged.schema
        ]
    )
    merged, groups = sorted_for_reads(merged, COMPACT_KEYS.get(folder.name, ()))
    name = compact_name(highest, writer)
    write_grouped(merged, groups, folder / name, target)
    for path in folder.iterdir():  # the parts, and leftovers of an interrupted compaction
        number = segment_number(path)
        mine = segment_writer(path) == writer and number is not None and number <= highest
        if mine and path.name != name:
            path.unlink(missing_ok=True)


def sorted_for_reads(table: pa.Table, keys: Sequence[str]) -> tuple[pa.Table, list[int]]:
    """``table`` sorted by ``keys`` (those it has) then step, and its row-group boundaries.

    Boundaries are row offsets where a row group starts; see ``COMPACT_KEYS``.
    """
    if "step" not in table.column_names:
        return table, [0]
    codes = {
        k: _sort_codes(table.column(k), by_name=k != "layer")
        for k in keys
        if k in table.column_names
    }
    order = pc.sort_indices(  # stable: rows with equal keys and step keep their order
        pa.table({**codes, "step": table.column("step")}),
        sort_keys=[(k, "ascending") for k in [*codes, "step"]],
    )
    table = table.take(order)
    changes = np.zeros(table.num_rows, dtype=bool)
    for column in codes.values():
        values = np.asarray(column.take(order))
        changes[1:] |= values[1:] != values[:-1]
    return table, _pack(np.flatnonzero(changes).tolist(), table.num_rows)


def write_grouped(
    table: pa.Table, starts: Sequence[int], path: Path, schema: pa.Schema | None = None
) -> None:
    """Write ``table`` atomically with a row group starting at each offset in ``starts``.

    ``schema`` (default: the table's) is what the file stores; each slice is cast to it as it
    is written, so dictionary-coded strings are decoded one row group at a time.
    """
    schema = schema or table.schema
    tmp = path.with_name(f".{path.name}.tmp")
    strings = [f.name for f in schema if pa.types.is_string(f.type)]
    encodings = {"step": "DELTA_BINARY_PACKED"} if "step" in schema.names else None
    with pq.ParquetWriter(
        tmp, schema, compression="zstd", use_dictionary=strings, column_encoding=encodings
    ) as out:
        for start, end in itertools.pairwise([*starts, table.num_rows]):
            part = table.slice(start, end - start).cast(schema)
            out.write_table(part, row_group_size=ROW_GROUP_MAX)
    os.replace(tmp, path)


def _sort_codes(column: pa.ChunkedArray, by_name: bool) -> pa.Array:
    """Integers that sort like ``column``: by name (or first seen) for strings."""
    if not (pa.types.is_string(column.type) or pa.types.is_dictionary(column.type)):
        return column.fill_null(-1) if column.null_count else column
    uniques = pc.unique(column)  # in the order first seen
    if pa.types.is_dictionary(uniques.type):
        uniques = uniques.cast(uniques.type.value_type)
    if by_name:
        uniques = uniques.take(pc.sort_indices(uniques))
    return pc.index_in(column, value_set=uniques).fill_null(-1)


def _pack(run_starts: list[int], rows: int) -> list[int]:
    """Row-group starts: a long run of equal keys gets its own groups, short runs share one."""
    starts, group = {0}, 0  # group: where the group being packed began
    for start, end in itertools.pairwise([0, *run_starts, rows]):
        if end - start >= ROW_GROUP_MIN:
            starts.update((start, end))
            group = end
        elif start - group >= ROW_GROUP_MIN:
            starts.add(start)
            group = start
    return sorted(s for s in starts if s < rows)
