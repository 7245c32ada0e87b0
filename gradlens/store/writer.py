"""Background writer: turns queued rows into Parquet segment files off the training thread.

The training thread only enqueues. Jobs are callables run on the writer thread (so decoding
and spike detection happen there too) that return rows per table. Rows are written as one
segment per table as soon as they arrive, but at most once per ``min_interval`` seconds (a
fast loop flushing every few milliseconds would otherwise write thousands of tiny files and
hold the GIL the training thread needs). ``close()`` drains, writes the tail and compacts.
"""

from __future__ import annotations

import functools
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from gradlens.store.schema import to_arrow
from gradlens.store.segments import readable_files, write_atomic, write_segment

__all__ = ["Rows", "RunWriter"]

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
        self, run_dir: Path, strict: bool | None = None, min_interval: float = 1.0
    ) -> None:
        self.run_dir = Path(run_dir)
        self.min_interval = min_interval
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
                self._guard(functools.partial(compact_table, folder))
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
            self._next_segment[table] = readable_files(folder)[1] + 1
        number = self._next_segment[table]
        write_segment(pa.concat_tables(parts), folder, number)
        self._next_segment[table] = number + 1

    def _guard(self, action: Callable[[], object]) -> None:
        """Run ``action``; a failure is reported once and never stops training."""
        try:
            action()
        except Exception as exc:  # gradlens must not take the training down with it
            if self._error is None:
                self._error = exc
                print(f"gradlens: writer error: {type(exc).__name__}: {exc}", file=sys.stderr)


def compact_table(folder: Path) -> None:
    """Merge a table's files into one compact file sorted by step, then delete the parts.

    Crash-safe at every point: the compact file appears atomically and covers exactly the
    segments numbered up to its own number (see ``segments.readable_files``).
    """
    files, highest = readable_files(folder)
    if len(files) <= 1:
        return
    tables = [pq.read_table(f) for f in files]
    merged = pa.concat_tables(tables, promote_options="default")
    merged = merged.sort_by([("step", "ascending")]) if "step" in merged.column_names else merged
    write_atomic(merged, folder / f"compact-{highest:06d}.parquet")
    for path in folder.iterdir():
        if path.name != f"compact-{highest:06d}.parquet" and path.suffix == ".parquet":
            path.unlink(missing_ok=True)
