"""The tables of a run and their columns.

Every table is long (tidy): one row per (step, metric, context) with one ``value``. Wide
pivots are the reader's job. A table not listed here is rejected by the writer, so this file
is the documentation of the run format.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

__all__ = ["SCHEMAS", "Coded", "schema_for", "to_arrow"]

_step = pa.field("step", pa.int64())
_metric = pa.field("metric", pa.string())
_layer = pa.field("layer", pa.string())
_value64 = pa.field("value", pa.float64())

SCHEMAS: dict[str, pa.Schema] = {
    # loss, grad_norm (before clipping), grad_norm_clipped, clip_coef, lr (index = param
    # group), step_time, samples_per_s, skipped, ...
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
    # multi-process runs: what differs between ranks (loss, step_time, samples_per_s, …)
    "ranks": pa.schema([_step, pa.field("rank", pa.int32()), _metric, _value64]),
    # Hessian probe: top_eigenvalue/top_residual (index = k), bottom_*, hvps, trace,
    # trace_stderr, trace_reached (0: the budget fell short), trace_deflated, lambda_min,
    # sharpness, eos_ratio, hvp_seconds/hvp_engine (layer = engine), fd_check_error,
    # fd_check_passed; layer = block for per-block spectra
    "hessian": pa.schema([_step, _metric, _layer, pa.field("index", pa.int32()), _value64]),
    # spectral density by SLQ: kind "quadrature" (x = node, value = weight) or "density"
    # (x = grid point, value = density)
    "spectrum": pa.schema(
        [
            _step,
            pa.field("kind", pa.string()),
            pa.field("index", pa.int32()),
            pa.field("x", pa.float64()),
            _value64,
        ]
    ),
    # neural collapse: nc1, cdnv, nc2_equinorm, nc2_equiangular, nc2_etf_distance, nc3, nc4
    "collapse": pa.schema([_step, _metric, _value64]),
    # the script's own scalars, from gradlens.log({...}) (metric = the name it gave)
    "user": pa.schema([_step, _metric, _value64]),
    # softmax collapse: saturated_fraction, zero_loss_fraction, max_logit_gap, log_z, ...;
    # layer set for per-layer signals (grad_weight_cos)
    "softmax": pa.schema([_step, _metric, _layer, _value64]),
    # loss-landscape slices: one row per grid point and metric (loss, accuracy); summary
    # metrics (roughness, curvature) have NaN coordinates
    "landscape": pa.schema(
        [
            _step,
            pa.field("slice", pa.string()),
            _metric,
            pa.field("alpha", pa.float64()),
            pa.field("beta", pa.float64()),
            _value64,
        ]
    ),
}


@dataclass(frozen=True)
class Coded:
    """A string column given as integer codes into ``labels``.

    Building it touches no Python string per row, so the writer thread holds the GIL (which
    the training thread needs) for microseconds instead of milliseconds.
    """

    codes: np.ndarray
    labels: Sequence[str]

    def to_arrow(self) -> pa.Array:
        codes = pa.array(np.asarray(self.codes, dtype=np.int32))
        return pa.DictionaryArray.from_arrays(codes, pa.array(list(self.labels), pa.string()))


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
    arrays = [_array(columns[f.name], f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def _array(values: Any, kind: pa.DataType) -> pa.Array:
    if isinstance(values, Coded):
        return values.to_arrow().dictionary_decode()
    return pa.array(values, type=kind, from_pandas=True)
