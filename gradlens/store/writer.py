"""Background writer: turns queued rows into table files off the training thread.

The training thread only enqueues. Jobs are callables run on the writer thread (so decoding
and spike detection happen there too) that return rows per table. Rows are appended to the
table's journal (``segments``: an Arrow IPC stream) as soon as they arrive, so a SIGKILL loses
only what was not yet handed to the writer. At most once per ``min_interval`` seconds (or when
it reaches ``FOLD_BYTES``) a journal is folded into one Parquet segment, and in a long run
segments are merged in the background, ``MERGE_FANOUT`` at a time, so a table holds
O(``MERGE_FANOUT`` · log(segments)) files at any moment. ``close()`` drains, folds and compacts
each table into one file. A storage failure (full or read-only disk) is one warning line
(``failures``) and never an exception out of the writer.
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

from gradlens.instrument.signals import HeldSignals
from gradlens.store.failures import remove_quietly, warn_storage
from gradlens.store.schema import SCHEMAS, arrow_array, to_arrow
from gradlens.store.segments import (
    Segment,
    compact_name,
    journal_name,
    merge_name,
    parse,
    read_journal,
    segments,
    write_segment,
)

__all__ = [
    "COMPACT_KEYS",
    "FOLD_BYTES",
    "MERGE_FANOUT",
    "ROW_GROUP_MAX",
    "ROW_GROUP_MIN",
    "Rows",
    "RunWriter",
    "Sink",
    "compact_table",
    "merge_segments",
    "sorted_for_reads",
    "write_grouped",
]

# table name -> column name -> values; or (table, columns) pairs where a table repeats
Rows = Mapping[str, Mapping[str, Any]] | Sequence[tuple[str, Mapping[str, Any]]]
Job = Callable[[], Rows]
Sink = Callable[[Job], None]  # where jobs go: RunWriter.submit, or a test's list.append

_STOP = object()  # fold the journals and stop
_STOP_UNFOLDED = object()  # stop with the journals closed as they are (compaction reads them)
FOLD_BYTES = 8 << 20  # a journal this big is folded into Parquet at once
MERGE_FANOUT = 8  # segments of one size merged together in the background
STORAGE_RETRY_S = 5.0  # after a failed write, a table's rows are dropped this long


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
        min_interval: float = 30.0,
        tag: str = "",
    ) -> None:
        """``min_interval``: seconds between two Parquet segments of a table (rows are on disk
        in the journal before that). ``tag`` (e.g. ``"r1"``) names this writer's files when
        several processes write."""
        self.run_dir = Path(run_dir).absolute()  # the script may os.chdir()
        self.min_interval = min_interval
        self.tag = tag
        self.strict = os.environ.get("GRADLENS_STRICT") == "1" if strict is None else strict
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._next_segment: dict[str, int] = {}
        self._journals: dict[str, _Journal] = {}
        self._retry_at: dict[str, float] = {}  # table -> when to try its disk again
        self._error: BaseException | None = None
        self._closed = False
        # Background merges run on their own thread, so a long merge never delays the journal.
        self._merges: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._merger = threading.Thread(target=self._merge_loop, name="gradlens-merge", daemon=True)
        self._thread = threading.Thread(target=self._loop, name="gradlens-writer", daemon=True)
        self._merger.start()
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Run ``job`` on the writer thread and write the rows it returns."""
        if not self._closed:
            self._queue.put(job)

    def write(self, table: str, columns: Mapping[str, Any]) -> None:
        """Queue rows for ``table`` (columns of equal length)."""
        self.submit(lambda: {table: columns})

    def sync(self, timeout: float | None = None) -> None:
        """Block until everything queued so far is on disk (in the journals)."""
        done = threading.Event()
        self._queue.put(done)
        done.wait(timeout)

    def close(self, compact: bool = True) -> None:
        """Drain the queue, fold the journals and (optionally) compact each table.

        Ctrl-C and SIGTERM are held meanwhile (``HeldSignals``: a third Ctrl-C abandons), so
        an interrupted join does not leave queued rows to die with the daemon thread. Storage
        failures are warned about, never raised.
        """
        if self._closed:
            return
        self._closed = True
        with HeldSignals():
            self._queue.put(_STOP_UNFOLDED if compact else _STOP)
            _join(self._thread)
            self._stopping.set()  # a merge under way stops; compaction reads its inputs
            self._merges.put(None)
            _join(self._merger)
            if compact:
                for folder in self._folders():
                    self._guard(functools.partial(compact_table, folder, self.tag), folder.name)
        if self._error is not None and self.strict:  # a gradlens bug, not a storage failure
            raise self._error

    def _folders(self) -> list[Path]:
        try:
            return sorted(p for p in self.run_dir.iterdir() if p.is_dir())
        except OSError as exc:
            warn_storage(self.run_dir, "cannot list the run folder", exc)
            return []

    # -- writer thread -------------------------------------------------------------------------

    def _loop(self) -> None:
        stop = False
        while not stop:
            try:
                items = [self._queue.get(timeout=self._until_fold())]
            except queue.Empty:
                items = []
            while True:  # drain whatever else is waiting
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = self._handle(items)
            del items  # hold no rows while waiting for the next ones

    def _handle(self, items: list[Any]) -> bool:
        """Write the rows of ``items`` to the journals, fold the due ones; True at the end."""
        stop = fold = False
        waiters: list[threading.Event] = []
        rows: dict[str, list[pa.Table]] = {}
        for item in items:
            if item is _STOP or item is _STOP_UNFOLDED:
                stop, fold = True, item is _STOP
            elif isinstance(item, threading.Event):
                waiters.append(item)
            else:
                self._guard(functools.partial(self._run_job, item, rows))
        for table, parts in rows.items():
            self._guard(functools.partial(self._append, table, parts), table)
        rows.clear()
        now = time.monotonic()
        for table, journal in list(self._journals.items()):
            if stop and not fold:  # compaction reads the journal: no Parquet copy first
                self._journals.pop(table).close()
            elif stop or journal.due(now, self.min_interval):
                self._guard(functools.partial(self._fold, table), table)
                if not stop:
                    self._merges.put(table)
        for waiter in waiters:
            waiter.set()
        return stop

    def _until_fold(self) -> float | None:
        if not self._journals:
            return None
        due = min(j.opened for j in self._journals.values()) + self.min_interval
        return max(0.0, due - time.monotonic())

    @staticmethod
    def _run_job(job: Job, rows: dict[str, list[pa.Table]]) -> None:
        result = job()  # {table: columns}, or (table, columns) pairs (a table may repeat)
        for table, columns in result.items() if isinstance(result, Mapping) else result:
            arrow = to_arrow(table, columns)
            if arrow.num_rows:
                rows.setdefault(table, []).append(arrow)

    def _append(self, table: str, parts: list[pa.Table]) -> None:
        if time.monotonic() < self._retry_at.get(table, 0.0):
            return  # the disk failed a moment ago: these rows cannot be kept either
        try:
            journal = self._journals.get(table) or self._open_journal(table)
            try:
                journal.append(pa.concat_tables(parts))
            except BaseException:
                # A journal cut by a failed write is read up to its last complete batch;
                # later rows go to a new one.
                del self._journals[table]
                journal.close()
                raise
        except OSError:  # try again after a pause, not with one new file per flush
            self._retry_at[table] = time.monotonic() + STORAGE_RETRY_S
            raise

    def _open_journal(self, table: str) -> _Journal:
        folder = self.run_dir / table
        if table not in self._next_segment:
            self._next_segment[table] = segments(folder, self.tag)[1] + 1
        number = self._next_segment[table]
        folder.mkdir(parents=True, exist_ok=True)
        journal = _Journal(folder / journal_name(number, self.tag), number, SCHEMAS[table])
        self._next_segment[table] = number + 1
        self._journals[table] = journal
        return journal

    def _fold(self, table: str) -> None:
        """Turn the table's journal into Parquet segment of the same number, then drop it."""
        journal = self._journals.pop(table)
        journal.close()
        rows = read_journal(journal.path, SCHEMAS[table])
        if rows.num_rows:
            write_segment(rows, journal.path.parent, journal.number, self.tag)
        journal.path.unlink()

    # -- merge thread --------------------------------------------------------------------------

    def _merge_loop(self) -> None:
        while (table := self._merges.get()) is not None:
            self._guard(functools.partial(self._merge, table), table)

    def _merge(self, table: str) -> None:
        """Merge ``MERGE_FANOUT`` consecutive files of one size, oldest first, while there are
        (background compaction: a table keeps O(FANOUT · log(segments)) files)."""
        while not self._stopping.is_set():
            group = _mergeable(segments(self.run_dir / table, self.tag)[0])
            if group is None:
                return
            merge_segments(group, self._stopping.is_set)

    def _guard(self, action: Callable[[], object], table: str | None = None) -> None:
        """Run ``action``; a failure is reported once and never stops training."""
        try:
            action()
        except OSError as exc:  # full or read-only disk: one line for the whole run
            where = f"writing table {table!r}" if table else "writing"
            warn_storage(self.run_dir, where, exc)
        except Exception as exc:  # gradlens must not take the training down with it
            if self._error is None:
                self._error = exc
                print(f"gradlens: writer error: {type(exc).__name__}: {exc}", file=sys.stderr)


class _Journal:
    """The open journal of one table: an Arrow IPC stream, appended at every flush.

    Each append is pushed to the operating system in one write before ``append`` returns,
    so the rows survive the process being killed.
    """

    def __init__(self, path: Path, number: int, schema: pa.Schema) -> None:
        self.path, self.number = path, number
        self.opened = time.monotonic()
        self.bytes = 0
        self._file = pa.OSFile(str(path), "wb")
        try:
            self._buffer = pa.BufferedOutputStream(self._file, buffer_size=1 << 20)
            self._stream = pa.ipc.new_stream(self._buffer, schema)
        except BaseException:
            self._file.close()
            raise
        self._open = True

    def append(self, table: pa.Table) -> None:
        self._stream.write_table(table)
        self._buffer.flush()  # one write() per append; OSFile itself does not buffer
        self.bytes = self._buffer.tell()

    def due(self, now: float, interval: float) -> bool:
        return now - self.opened >= interval or self.bytes >= FOLD_BYTES

    def close(self) -> None:
        if not self._open:
            return
        self._open = False
        try:
            self._stream.close()  # the end-of-stream marker
            self._buffer.close()
        except (OSError, pa.ArrowException):
            pass
        finally:
            if not self._file.closed:
                self._file.close()


def _join(thread: threading.Thread) -> None:
    """Wait for ``thread`` in short joins: a signal that lands just before a blocking wait
    starts is otherwise only handled when the wait ends (its Ctrl-C would seem lost)."""
    while thread.is_alive():
        thread.join(0.05)


def _mergeable(kept: Sequence[Segment]) -> list[Segment] | None:
    """The oldest ``MERGE_FANOUT`` consecutive Parquet files of one level, if any."""
    run: list[Segment] = []
    for segment in kept:
        if segment.kind == "journal" or (run and _level(segment) != _level(run[0])):
            run = []
        if segment.kind != "journal":
            run.append(segment)
        if len(run) == MERGE_FANOUT:
            return run
    return None


def _level(segment: Segment) -> int:
    """log_FANOUT of the number of segments a file covers: 0 for a part, 1 for a merge of 8…"""
    width, level = segment.hi - segment.lo + 1, 0
    while width >= MERGE_FANOUT:
        width //= MERGE_FANOUT
        level += 1
    return level


class MergeCancelled(Exception):
    """``merge_segments`` was told to stop; nothing changed."""


def merge_segments(
    files: Sequence[Segment], cancelled: Callable[[], bool] = lambda: False
) -> Path | None:
    """Merge consecutive Parquet files of one writer into ``merge-LO-HI``, then delete them.

    Streams row groups (memory: one row group), keeps the rows' order, and is crash-safe like
    compaction: the merged file appears atomically and covers exactly the inputs' range.
    ``cancelled`` is asked between row groups; if it says so, the merge stops, leaves no
    file behind and returns None.
    """
    first, last = files[0], files[-1]
    folder = first.path.parent
    path = folder / merge_name(first.lo, last.hi, first.tag)
    schema = pa.unify_schemas([pq.read_schema(s.path) for s in files])
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as out:
            pending: list[pa.RecordBatch] = []
            size = 0
            for segment in files:
                for batch in pq.ParquetFile(segment.path).iter_batches(batch_size=ROW_GROUP_MAX):
                    if cancelled():
                        raise MergeCancelled
                    pending.append(batch)
                    size += batch.num_rows
                    if size >= ROW_GROUP_MAX:
                        out.write_table(pa.Table.from_batches(pending).cast(schema))
                        pending, size = [], 0
            if pending:
                out.write_table(pa.Table.from_batches(pending).cast(schema))
        os.replace(tmp, path)
    except MergeCancelled:
        remove_quietly(tmp)
        return None
    except BaseException:
        remove_quietly(tmp)
        raise
    merged = parse(path)
    assert merged is not None
    _remove_covered(folder, merged)
    return path


def _remove_covered(folder: Path, cover: Segment) -> None:
    """Delete the files (and stale temp files) of ``cover``'s writer that ``cover`` holds."""
    for path in folder.iterdir():
        name = path.name
        stale = name.startswith(".") and name.endswith(".tmp")
        segment = parse(path.with_name(name[1:-4]) if stale else path)
        if segment is None or segment.path.name == cover.path.name:
            continue
        if cover.covers(segment):
            remove_quietly(path)


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
    """Merge a table's files into one compact file sorted for reads, then delete the rest.

    Crash-safe at every point: the compact file appears atomically and covers exactly the
    segments numbered up to its own number (see ``segments``). The layout is described at
    ``COMPACT_KEYS``; reading the file back with ``Run.table`` still gives rows sorted by step.
    """
    kept, highest = segments(folder, writer)
    if not kept:
        return
    name = compact_name(highest, writer)
    if len(kept) == 1 and kept[0].kind == "compact" and kept[0].hi == highest:
        _remove_covered(folder, kept[0])
        return
    tables = [_read_coded(s.path) for s in kept]  # strings stay dictionary-coded
    tables = [t for t in tables if t.num_rows]
    if not tables:  # only empty journals (a write that failed): nothing to keep
        for segment in kept:
            if segment.kind == "journal":
                remove_quietly(segment.path)
        return
    merged = pa.concat_tables(tables, promote_options="default")
    target = pa.schema(
        [
            f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type) else f
            for f in merged.schema
        ]
    )
    merged, groups = sorted_for_reads(merged, COMPACT_KEYS.get(folder.name, ()))
    write_grouped(merged, groups, folder / name, target)
    compacted = parse(folder / name)
    assert compacted is not None
    _remove_covered(folder, compacted)


def _read_coded(path: Path) -> pa.Table:
    """One table file with its string columns dictionary-coded."""
    if path.name.startswith("journal-"):
        table = read_journal(path, SCHEMAS.get(path.parent.name))
        for i, field in enumerate(table.schema):
            if pa.types.is_string(field.type):
                table = table.set_column(i, field.name, pc.dictionary_encode(table.column(i)))
        return table
    schema = pq.read_schema(path)
    strings = [f.name for f in schema if pa.types.is_string(f.type)]
    with pq.ParquetFile(path, read_dictionary=strings) as file:  # read_table imports pandas
        return file.read()


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
    keyed = pa.Table.from_arrays([*codes.values(), table.column("step")], [*codes, "step"])
    order = pc.sort_indices(  # stable: rows with equal keys and step keep their order
        keyed, sort_keys=[(k, "ascending") for k in [*codes, "step"]]
    )
    table = table.take(order)
    changes = np.zeros(table.num_rows, dtype=bool)
    for column in codes.values():
        values = _integers(column.take(order))
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
    try:
        with pq.ParquetWriter(
            tmp, schema, compression="zstd", use_dictionary=strings, column_encoding=encodings
        ) as out:
            for start, end in itertools.pairwise([*starts, table.num_rows]):
                part = table.slice(start, end - start).cast(schema)
                out.write_table(part, row_group_size=ROW_GROUP_MAX)
        os.replace(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise


def _sort_codes(column: pa.ChunkedArray, by_name: bool) -> pa.Array:
    """Integers that sort like ``column``: by name (or first seen) for strings."""
    if not (pa.types.is_string(column.type) or pa.types.is_dictionary(column.type)):
        return _minus_one_for_null(column) if column.null_count else column
    uniques = pc.unique(column)  # in the order first seen
    if pa.types.is_dictionary(uniques.type):
        uniques = uniques.cast(uniques.type.value_type)
    if by_name:
        uniques = uniques.take(pc.sort_indices(uniques))
    return _minus_one_for_null(pc.index_in(column, value_set=uniques))


def _integers(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """An integer Arrow array without nulls as NumPy, read from its buffer (pyarrow's own
    ``to_numpy`` imports pandas, which the training process otherwise never needs)."""
    array = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if not pa.types.is_signed_integer(array.type):
        return np.asarray(array)
    dtype = np.dtype(f"int{array.type.bit_width}")
    data = array.buffers()[1]
    if data is None:  # no rows
        return np.zeros(0, dtype=dtype)
    return np.frombuffer(data, dtype=dtype, count=len(array), offset=array.offset * dtype.itemsize)


def _minus_one_for_null(values: Any) -> Any:
    """``values.fill_null(-1)`` without ``pa.scalar`` (which imports pandas)."""
    minus_one = arrow_array(np.array([-1]), values.type)[0]
    return pc.fill_null(values, minus_one)


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
