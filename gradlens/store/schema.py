"""The tables of a run and their columns.

Every table is long (tidy): one row per (step, metric, context) with one ``value``. Wide
pivots are the reader's job. A table not listed here is rejected by the writer, so this file
is the documentation of the run format.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyarrow as pa

__all__ = ["SCHEMAS", "schema_for", "to_arrow"]

_step = pa.field("step", pa.int64())
_metric = pa.field("metric", pa.string())
_layer = pa.field("layer", pa.string())
_value64 = pa.field("value", pa.float64())

SCHEMAS: dict[str, pa.Schema] = {
    # loss, grad_norm, lr (index = param group), step_time, samples_per_s, skipped, ...
    "scalars": pa.schema([_step, _metric, pa.field("index", pa.int32()), _value64]),
    # per parameter tensor: grad_norm, param_norm, update_norm, update_ratio, nonfinite
    "layers": pa.schema([_step, _layer, _metric, pa.field("value", pa.float32())]),
    # spikes, non-finite values, skipped AMP steps: one row per event
    "events": pa.schema(
        [
            _step,
            pa.field("kind", pa.string()),
            _metric,
            _layer,
            _value64,
            pa.field("baseline", pa.float64()),
            pa.field("ratio", pa.float64()),
            pa.field("detail", pa.string()),
        ]
    ),
}


def schema_for(table: str) -> pa.Schema:
    """The schema of a known table; ``KeyError`` names the known ones."""
    try:
        return SCHEMAS[table]
    except KeyError:
        raise KeyError(f"unknown table {table!r}; known: {', '.join(sorted(SCHEMAS))}") from None


def to_arrow(table: str, columns: Mapping[str, Any]) -> pa.Table:
    """Build an Arrow table for ``table`` from column arrays, cast to its schema."""
    schema = schema_for(table)
    missing = [f.name for f in schema if f.name not in columns]
    if missing:
        raise ValueError(f"table {table!r} rows lack columns {missing}")
    arrays = [pa.array(columns[f.name], type=f.type, from_pandas=True) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)
