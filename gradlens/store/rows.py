"""Rows for one of the long tables, built and checked against the schema where they are made.

A probe knows its context (the step, a layer, a kind) once and its measurements as lists;
:func:`long_rows` repeats the context to the length of the lists and checks the columns, so
a wrong row fails on the training thread with the table and column named, not later on the
writer thread. :func:`check_rows` is the same check for columns built by hand.

Example:
    >>> long_rows("collapse", 7, metric=["nc1", "nc3"], value=[0.5, 0.1])
    {'step': [7, 7], 'metric': ['nc1', 'nc3'], 'value': [0.5, 0.1]}
"""

from __future__ import annotations

from collections.abc import Mapping, Sized
from typing import Any

import numpy as np
import pyarrow as pa

from gradlens.store.schema import SCHEMAS, Coded, arrow_array

__all__ = ["check_rows", "long_rows"]

# what pyarrow raises for a value its column's type cannot hold
_CAST_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError)


def long_rows(table: str, step: int, **columns: Any) -> dict[str, Any]:
    """Columns of ``table`` for rows at ``step``: lists are the rows' values, a scalar (a str
    or a number) is repeated on every row; without any list, one row.

    Raises ``ValueError`` naming the table and the column for an unknown table, a missing or
    unknown column, lists of unequal lengths, or a value the column's type cannot hold.
    """
    _schema(table)
    given = {"step": step, **columns}
    lists = {name: _list(v) for name, v in given.items() if not _is_scalar(v)}
    lengths = {name: _length(v) for name, v in lists.items()}
    _check_lengths(table, lengths)
    n = next(iter(lengths.values()), 1)
    rows = {name: lists[name] if name in lists else [v] * n for name, v in given.items()}
    check_rows(table, rows)
    return rows


def check_rows(table: str, columns: Mapping[str, Any]) -> None:
    """Check ``columns`` against the schema of ``table``, as the writer will read them: every
    column present, none unknown, equal lengths, values of the column's type.

    Raises ``ValueError`` with one line naming the table and the column.
    """
    schema = _schema(table)
    if not isinstance(columns, Mapping):
        raise ValueError(f"table {table!r}: rows must map column → values, got {_kind(columns)}")
    names = schema.names
    missing = [name for name in names if name not in columns]
    if missing:
        raise ValueError(f"table {table!r} rows lack column {missing[0]!r}; {_wants(schema)}")
    unknown = [name for name in columns if name not in names]
    if unknown:
        raise ValueError(f"table {table!r} has no column {unknown[0]!r}; {_wants(schema)}")
    lengths = {}
    for name in names:
        values = columns[name]
        if _is_scalar(values):
            raise ValueError(
                f"table {table!r} column {name!r} must be a list of values, got {_kind(values)}"
            )
        lengths[name] = _length(values)
    _check_lengths(table, lengths)
    for field in schema:
        _check_type(table, field, columns[field.name])


def _schema(table: str) -> pa.Schema:
    if not isinstance(table, str) or table not in SCHEMAS:
        raise ValueError(f"unknown table {table!r}; known: {', '.join(sorted(SCHEMAS))}")
    return SCHEMAS[table]


def _check_lengths(table: str, lengths: Mapping[str, int]) -> None:
    if len(set(lengths.values())) > 1:
        (first, n), *rest = lengths.items()
        name, m = next((name, m) for name, m in rest if m != n)
        raise ValueError(f"table {table!r} column {name!r} has {m} rows, column {first!r} has {n}")


def _check_type(table: str, field: pa.Field, values: Any) -> None:
    """Cast as the writer does (``schema.to_arrow``); a failure names the column."""
    if isinstance(values, Coded):
        values = list(values.labels)  # the codes are checked by their length
    try:
        arrow_array(values, field.type)
    except _CAST_ERRORS as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"table {table!r} column {field.name!r} ({field.type}): {reason}"
        ) from None


def _list(values: Any) -> Any:
    """Python values for NumPy arrays; a ``Coded`` column as it is."""
    if isinstance(values, Coded):
        return values
    return values.tolist() if isinstance(values, np.ndarray) else list(values)


def _length(values: Any) -> int:
    return len(values.codes if isinstance(values, Coded) else values)


def _is_scalar(values: Any) -> bool:
    """A context value (repeated on every row), as opposed to a column of values."""
    if isinstance(values, (str, bytes)) or getattr(values, "ndim", None) == 0:
        return True  # also NumPy scalars and 0-d arrays
    return not isinstance(values, (Sized, Coded))


def _wants(schema: pa.Schema) -> str:
    return f"its columns: {', '.join(schema.names)}"


def _kind(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"[:80]
