"""Fast reads of a few columns, skipping row groups by their statistics.

``Run.table`` suits whole tables. Readers that want one metric (or one layer) of a long run at
a time — the dashboard — use these instead: the compacted layout (``writer.COMPACT_KEYS``)
writes every (metric, layer) run of rows as its own row groups, so the min/max statistics of
a row group tell which groups to read, and a column that is constant in a group (min == max)
is rebuilt from the statistics instead of being decoded. String columns come back
dictionary-coded (cheap to carry, ``.indices`` for codes).

Example:
    >>> files = table_files(run.path, "layers")                       # doctest: +SKIP
    >>> read_columns(files, ["step", "layer", "value"], where={"metric": "grad_norm"})
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gradlens.errors import TableError
from gradlens.store.schema import SCHEMAS
from gradlens.store.segments import is_journal, read_journal, readable_files

__all__ = [
    "FileInfo",
    "GroupInfo",
    "Where",
    "distinct",
    "file_info",
    "read_columns",
    "signature",
    "table_files",
]

# column -> one value, or a collection of values (row kept if its value is among them)
Where = Mapping[str, Any]
_STRING = pa.dictionary(pa.int32(), pa.string())


@dataclass(frozen=True)
class GroupInfo:
    """One row group: its row count and, per column, (min, max) when known and null-free."""

    rows: int
    bounds: dict[str, tuple[Any, Any]]


@dataclass(frozen=True)
class FileInfo:
    """A Parquet file's schema and row groups, read from its footer."""

    schema: pa.Schema
    groups: list[GroupInfo]


def table_files(run_dir: Path, table: str) -> list[Path]:
    """The files that hold ``table``'s rows (see ``segments.readable_files``)."""
    return readable_files(Path(run_dir) / table)[0]


def signature(files: Sequence[Path]) -> tuple[tuple[str, int, int], ...]:
    """(name, mtime_ns, size) per file: changes whenever the table's rows change."""
    out = []
    for path in files:
        try:
            stat = path.stat()
        except FileNotFoundError:  # compacted away since listed
            continue
        out.append((path.name, stat.st_mtime_ns, stat.st_size))
    return tuple(out)


def file_info(path: Path) -> FileInfo:
    """The footer of ``path`` (cached while the file is unchanged)."""
    stat = path.stat()
    return _file_info(str(path), stat.st_mtime_ns, stat.st_size)


def read_columns(
    files: Sequence[Path],
    columns: Sequence[str],
    where: Where | None = None,
    steps: tuple[int, int] | None = None,
) -> pa.Table:
    """Rows of ``files`` matching ``where`` (and ``lo <= step <= hi``), only ``columns``.

    Raises:
        TableError: a file is unreadable or lacks a column.
    """
    conditions = {k: _allowed(v) for k, v in (where or {}).items()}
    parts = []
    for path in files:
        try:
            parts += _read_file(path, list(columns), conditions, steps)
        except FileNotFoundError:
            continue  # compacted away since listed; the compact file holds its rows
        except (OSError, pa.ArrowException, KeyError, ValueError) as exc:
            raise TableError(f"{path}: unreadable ({exc})") from None
    if not parts:
        return _empty(files, columns)
    return pa.concat_tables(parts)


def distinct(files: Sequence[Path], column: str) -> list[Any]:
    """Distinct values of ``column`` in the order first seen (from statistics where it can).

    Raises:
        TableError: a file is unreadable or lacks the column.
    """
    seen: dict[Any, None] = {}
    for path in files:
        try:
            if is_journal(path):
                for value in pc.unique(_journal(path).column(column)).to_pylist():
                    seen.setdefault(value, None)
                continue
            info = file_info(path)
            for index, group in enumerate(info.groups):
                lo, hi = group.bounds.get(column, (None, None))
                if lo is not None and lo == hi:
                    seen.setdefault(lo, None)
                    continue
                part = pq.ParquetFile(path).read_row_group(index, columns=[column])
                for value in pc.unique(part.column(column)).to_pylist():
                    seen.setdefault(value, None)
        except FileNotFoundError:
            continue
        except (OSError, pa.ArrowException, KeyError, ValueError) as exc:
            raise TableError(f"{path}: unreadable ({exc})") from None
    return list(seen)


# -- helpers -------------------------------------------------------------------------------------


def _journal(path: Path) -> pa.Table:
    """A journal's complete rows (journals are small: the rows of one fold interval)."""
    stat = path.stat()
    return _journal_rows(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _journal_rows(path: str, mtime_ns: int, size: int) -> pa.Table:
    return read_journal(Path(path), SCHEMAS.get(Path(path).parent.name))


@functools.lru_cache(maxsize=4096)
def _file_info(path: str, mtime_ns: int, size: int) -> FileInfo:
    if is_journal(Path(path)):  # one group, no statistics: never pruned, always read
        table = _journal(Path(path))
        return FileInfo(table.schema, [GroupInfo(table.num_rows, {})] if table.num_rows else [])
    meta = pq.ParquetFile(path).metadata
    schema = meta.schema.to_arrow_schema()
    groups = []
    for i in range(meta.num_row_groups):
        group = meta.row_group(i)
        bounds = {}
        for j in range(group.num_columns):
            chunk = group.column(j)
            stats = chunk.statistics
            # Float statistics ignore NaN (a group of [NaN, 1, 1] has min == max == 1): only
            # exact types may be pruned on or taken as constant.
            if pa.types.is_floating(schema.field(chunk.path_in_schema).type):
                continue
            if stats is not None and stats.has_min_max and stats.null_count == 0:
                bounds[chunk.path_in_schema] = (stats.min, stats.max)
        groups.append(GroupInfo(group.num_rows, bounds))
    return FileInfo(schema, groups)


def _allowed(value: Any) -> frozenset[Any]:
    if isinstance(value, str) or not isinstance(value, Collection):
        return frozenset([value])
    return frozenset(value)


def _read_file(
    path: Path,
    columns: list[str],
    conditions: dict[str, frozenset[Any]],
    steps: tuple[int, int] | None,
) -> list[pa.Table]:
    if is_journal(path):
        return _read_journal_file(path, columns, conditions, steps)
    info = file_info(path)
    names = set(info.schema.names)
    for column in [*columns, *conditions]:
        if column not in names:
            raise KeyError(f"no column {column!r}")
    strings = [f.name for f in info.schema if pa.types.is_string(f.type)]
    reader: pq.ParquetFile | None = None
    parts = []
    for index, group in enumerate(info.groups):
        settled = _settled(group, conditions, steps)
        if settled is None:
            continue  # statistics rule the whole group out
        constant = {
            c: group.bounds[c][0]
            for c in columns
            if c in group.bounds and group.bounds[c][0] == group.bounds[c][1]
        }
        unsettled = [c for c in conditions if c not in settled]
        need_steps = steps is not None and "step" not in settled
        read = [c for c in columns if c not in constant]
        read += [c for c in [*unsettled, *(["step"] if need_steps else [])] if c not in read]
        if reader is None:
            reader = pq.ParquetFile(path, read_dictionary=strings)
        part = reader.read_row_group(index, columns=read) if read else None
        rows = group.rows if part is None else part.num_rows
        mask = _mask(part, unsettled, conditions, steps if need_steps else None)
        if mask is not None:
            part = part.filter(mask) if part is not None else None
            rows = int(pc.sum(mask).as_py() or 0)
        if rows == 0:
            continue
        arrays = []
        for column in columns:
            if column in constant:
                arrays.append(_repeat(constant[column], rows, info.schema.field(column).type))
            else:
                assert part is not None
                arrays.append(part.column(column))
        parts.append(pa.table(arrays, names=columns))
    return parts


def _read_journal_file(
    path: Path,
    columns: list[str],
    conditions: dict[str, frozenset[Any]],
    steps: tuple[int, int] | None,
) -> list[pa.Table]:
    table = _journal(path)
    if not table.num_rows:
        return []
    for column in [*columns, *conditions]:
        if column not in table.column_names:
            raise KeyError(f"no column {column!r}")
    mask = _mask(table, list(conditions), conditions, steps)
    if mask is not None:
        table = table.filter(mask)
    if not table.num_rows:
        return []
    arrays = []
    for column in columns:  # strings dictionary-coded, like the Parquet reads
        values = table.column(column)
        arrays.append(pc.dictionary_encode(values) if pa.types.is_string(values.type) else values)
    return [pa.table(arrays, names=columns)]


def _settled(
    group: GroupInfo, conditions: dict[str, frozenset[Any]], steps: tuple[int, int] | None
) -> set[str] | None:
    """Conditions every row of the group meets; None if no row can meet them all."""
    settled = set()
    for column, allowed in conditions.items():
        if column not in group.bounds:
            continue
        lo, hi = group.bounds[column]
        inside = [v for v in allowed if v is not None and lo <= v <= hi]
        if not inside:
            return None
        if lo == hi:
            settled.add(column)
    if steps is not None and "step" in group.bounds:
        lo, hi = group.bounds["step"]
        if hi < steps[0] or lo > steps[1]:
            return None
        if steps[0] <= lo and hi <= steps[1]:
            settled.add("step")
    return settled


def _mask(
    part: pa.Table | None,
    unsettled: list[str],
    conditions: dict[str, frozenset[Any]],
    steps: tuple[int, int] | None,
) -> pa.ChunkedArray | None:
    if part is None or (not unsettled and steps is None):
        return None
    terms = []
    for column in unsettled:
        values = part.column(column)
        if pa.types.is_dictionary(values.type):
            values = values.cast(values.type.value_type)
        terms.append(pc.is_in(values, value_set=pa.array(list(conditions[column]))))
    if steps is not None:
        step = part.column("step")
        terms.append(pc.and_(pc.greater_equal(step, steps[0]), pc.less_equal(step, steps[1])))
    mask = functools.reduce(pc.and_, terms)
    return mask.fill_null(False)


def _repeat(value: Any, rows: int, kind: pa.DataType) -> pa.Array:
    if pa.types.is_string(kind):
        indices = pa.array(np.zeros(rows, dtype=np.int32))
        return pa.DictionaryArray.from_arrays(indices, pa.array([value], pa.string()))
    return pa.array(np.full(rows, value), type=kind)


def _empty(files: Sequence[Path], columns: Sequence[str]) -> pa.Table:
    fields = []
    schema = file_info(files[0]).schema if files else None
    for column in columns:
        kind = schema.field(column).type if schema is not None else pa.null()
        fields.append(pa.field(column, _STRING if pa.types.is_string(kind) else kind))
    return pa.schema(fields).empty_table()
