"""Reading runs back: ``open_run(path).table("layers")`` → pandas DataFrame.

Readers see every complete segment written so far, journals included (up to their last
complete batch), so a run still being written (or one that was killed) reads back with
everything that was flushed.
"""

from __future__ import annotations

import functools
import operator
import time
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds

from gradlens.errors import RunNotFoundError, RunUnreadableError, TableError
from gradlens.store.meta import read_meta, resolved_status
from gradlens.store.schema import SCHEMAS
from gradlens.store.segments import is_journal, read_journal, readable_files

__all__ = ["Run", "list_runs", "open_run"]

Filter = tuple[str, str, Any]
_ATTEMPTS = 20  # listings of a table whose files a writer replaces while it is read


class Run:
    """A run directory: metadata plus one Parquet table per folder.

    Example:
        >>> run = open_run("runs/mlp")                 # doctest: +SKIP
        >>> run.status, run.steps
        ('finished', 300)
        >>> run.table("layers", filters=[("metric", "==", "grad_norm")]).head()
    """

    def __init__(self, path: Path, meta: dict[str, Any], unreadable: str | None = None) -> None:
        """``unreadable``: why the run cannot be read (then ``meta`` is empty); such runs come
        only from ``list_runs``, which lists a bad run instead of failing for the folder."""
        self.path = path
        self.meta = meta
        self.unreadable = unreadable

    @property
    def name(self) -> str:
        return str(self.meta.get("name", self.path.name))

    @cached_property
    def status(self) -> str:
        """running, finished, failed, interrupted, crashed (never finalized) or unreadable."""
        if self.unreadable is not None:
            return "unreadable"
        return resolved_status(self.meta, self.path)

    def tables(self) -> list[str]:
        """Names of the tables that hold at least one file."""
        return sorted(p.name for p in self.path.iterdir() if p.is_dir() and _files(p))

    def has_table(self, name: str) -> bool:
        return bool(_files(self.path / name))

    def table(
        self,
        name: str,
        columns: Sequence[str] | None = None,
        filters: Sequence[Filter] | None = None,
    ) -> pd.DataFrame:
        """Rows of table ``name`` as a DataFrame, sorted by step.

        ``columns`` reads only those columns; ``filters`` are ``(column, op, value)`` triples
        (ops ``==, !=, <, <=, >, >=, in``) applied while reading. A table with no file gives an
        empty frame; an unreadable one raises ``TableError``.
        """
        files = _files(self.path / name)
        if not files:
            if name not in SCHEMAS:
                raise TableError(f"run {self.name!r} has no table {name!r}")
            empty = SCHEMAS[name].empty_table().to_pandas()
            return empty[list(columns)] if columns else empty
        done: dict[Path, pa.Table] = {}  # rows read so far, kept while their file still counts
        for attempt in range(_ATTEMPTS):
            try:
                frame = _read(files, columns, filters, done)
                break
            except FileNotFoundError:  # folded, merged or compacted while we read: list again
                files = _files(self.path / name)
                done = {path: rows for path, rows in done.items() if path in files}
                if attempt == _ATTEMPTS - 1 or not files:
                    raise TableError(
                        f"table {name!r} of run {self.name!r} changed while being read"
                    ) from None
            except (OSError, pa.ArrowException, ValueError) as exc:
                raise TableError(
                    f"table {name!r} of run {self.name!r} is unreadable: {exc}"
                ) from None
        df = frame.to_pandas()
        if "step" in df.columns:
            df = df.sort_values("step", kind="stable", ignore_index=True)
        return df

    @cached_property
    def steps(self) -> int:
        """Optimizer steps recorded (from meta when finalized, else from the data)."""
        if self.unreadable is not None:
            return 0
        if isinstance(self.meta.get("steps"), int) and self.status != "running":
            return int(self.meta["steps"])
        if not self.has_table("scalars"):
            return 0
        steps = self.table("scalars", columns=["step"])["step"]
        return int(steps.max()) + 1 if len(steps) else 0

    @property
    def start_time(self) -> float | None:
        return _seconds(self.meta.get("start_time"))

    @property
    def duration(self) -> float | None:
        """Seconds from start to end (to the last write for unfinished runs)."""
        start = self.start_time
        if start is None:
            return None
        end = _seconds(self.meta.get("end_time"))
        if end is None:
            files = _files_of(self.path)
            end = max((p.stat().st_mtime for p in files), default=start)
            if self.status == "running":
                end = time.time()
        return max(0.0, float(end) - start)

    def __repr__(self) -> str:
        return f"Run({self.name!r}, status={self.status!r}, path={str(self.path)!r})"


def open_run(path: str | Path) -> Run:
    """Open the run at ``path``.

    Raises:
        RunNotFoundError: ``path`` is not a gradlens run (no ``meta.json``).
        RunUnreadableError: its ``meta.json`` is unreadable or invalid (a ``RunNotFoundError``
            too); the message says why in one line.
    """
    run_dir = Path(path)
    if not (run_dir / "meta.json").is_file():
        raise RunNotFoundError(f"{path}: not a gradlens run (no meta.json)")
    try:
        meta = read_meta(run_dir)
    except FileNotFoundError:
        raise RunNotFoundError(f"{path}: not a gradlens run (no meta.json)") from None
    return Run(run_dir, meta)


def list_runs(runs_dir: str | Path) -> list[Run]:
    """Every run directly under ``runs_dir``, oldest first.

    A run whose ``meta.json`` is unreadable is listed too (first), with ``run.unreadable``
    saying why and status ``unreadable``: one bad run never hides the others.
    """
    root = Path(runs_dir)
    if not root.is_dir():
        raise RunNotFoundError(f"{runs_dir}: no such directory")
    runs = []
    for child in root.iterdir():
        try:
            if not (child / "meta.json").is_file():
                continue
            runs.append(open_run(child))
        except RunUnreadableError as exc:
            runs.append(Run(child, {}, unreadable=_short(str(exc), child)))
        except (RunNotFoundError, OSError):  # vanished or not listable: not a run
            continue
    return sorted(runs, key=lambda r: (r.start_time or 0.0, r.name))


def open_runs(
    runs_dir: str | Path,
    table: str = "scalars",
    columns: Sequence[str] | None = None,
    filters: Sequence[Filter] | None = None,
    runs: Sequence[str] | None = None,
) -> pd.DataFrame:
    """One tidy frame of ``table`` over the runs in ``runs_dir``, with a ``run`` column.

    Reads only ``columns`` (plus ``run``) and the rows ``filters`` keep, run by run; unreadable
    runs and runs without the table are left out. ``runs`` restricts to those names.

    Example:
        >>> df = open_runs("runs", filters=[("metric", "==", "loss")])  # doctest: +SKIP
        >>> df.pivot_table(index="step", columns="run", values="value")
    """
    frames = []
    wanted = set(runs) if runs is not None else None
    for run in list_runs(runs_dir):
        if run.unreadable or (wanted is not None and run.name not in wanted):
            continue
        try:
            frame = run.table(table, columns=columns, filters=filters)
        except TableError:
            continue
        if len(frame):
            frames.append(frame.assign(run=run.name))
    if not frames:
        empty = SCHEMAS[table].empty_table().to_pandas() if table in SCHEMAS else pd.DataFrame()
        empty = empty[list(columns)] if columns else empty
        return empty.assign(run=pd.Series(dtype=str))
    return pd.concat(frames, ignore_index=True)


def _short(message: str, run_dir: Path) -> str:
    """The reason without the path (the run's folder shows it already)."""
    prefix = f"{run_dir / 'meta.json'}: "
    return "meta.json " + message[len(prefix) :] if message.startswith(prefix) else message


def _read(
    files: list[Path],
    columns: Sequence[str] | None,
    filters: Sequence[Filter] | None,
    done: dict[Path, pa.Table],
) -> pa.Table:
    """The rows of ``files``; those in ``done`` are not read again, new ones are added."""
    expr = _expression(filters) if filters else None
    wanted = list(columns) if columns else None
    parquet = [f for f in files if not is_journal(f) and f not in done]
    if parquet:
        schema = pa.unify_schemas([ds.dataset(f, format="parquet").schema for f in parquet])
    for path in files:
        if path in done:
            continue
        if is_journal(path):
            table = read_journal(path, SCHEMAS.get(path.parent.name))
            if expr is not None and table.num_rows:
                table = table.filter(expr)
            done[path] = table.select(wanted) if wanted is not None else table
        else:
            dataset = ds.dataset(str(path), format="parquet", schema=schema)
            done[path] = dataset.to_table(columns=wanted, filter=expr)
    parts = [done[f] for f in files if done[f].num_rows]
    if not parts:
        return done[files[0]]
    if len(parts) == 1:
        return parts[0]
    return pa.concat_tables(parts, promote_options="permissive")


def _files_of(run_dir: Path) -> list[Path]:
    """Every table file of a run (Parquet and journals)."""
    return [p for p in run_dir.rglob("*") if p.suffix in (".parquet", ".arrows")]


def _seconds(value: Any) -> float | None:
    """A timestamp from meta.json; None when missing or not a number."""
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _files(folder: Path) -> list[Path]:
    return readable_files(folder)[0]


_OPS = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def _expression(filters: Sequence[Filter]) -> ds.Expression:
    terms = []
    for column, op, value in filters:
        if op == "in":
            terms.append(ds.field(column).isin(list(value)))
        elif op in _OPS:
            terms.append(_OPS[op](ds.field(column), value))
        else:
            raise ValueError(f"unknown filter operator {op!r}")
    return functools.reduce(operator.and_, terms)
