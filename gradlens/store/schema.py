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

__all__ = ["SCHEMAS", "Coded", "arrow_array", "schema_for", "to_arrow"]

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
        codes = _from_numpy(np.asarray(self.codes, dtype=np.int32), pa.int32())
        return pa.DictionaryArray.from_arrays(codes, _strings(list(self.labels)))


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
    arrays = [arrow_array(columns[f.name], f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


# Arrow types of the schemas above whose values can be handed over as a NumPy buffer
_NUMPY: dict[pa.DataType, type] = {
    pa.int64(): np.int64,
    pa.int32(): np.int32,
    pa.float64(): np.float64,
    pa.float32(): np.float32,
}


def arrow_array(values: Any, kind: pa.DataType) -> pa.Array:
    """``values`` as an Arrow array of ``kind``: what ``pa.array(values, type=kind,
    from_pandas=True)`` gives (NaN and None are null; a lossy cast to an integer raises), built
    from NumPy buffers where it can.

    ``pa.array`` imports pandas for any NumPy or list input; in the training process that is
    ~0.7 s of imports holding the GIL on the writer thread at the first flush (a stall that
    shows in the step times gradlens records) and ~60 MB of memory.
    """
    if isinstance(values, Coded):
        return values.to_arrow().dictionary_decode()
    if pa.types.is_string(kind):
        return _strings(values)
    dtype = _NUMPY.get(kind)
    array = np.asarray(values) if dtype is not None else None
    if array is not None and array.dtype == object and np.dtype(dtype).kind == "f":
        array = _floats_or_none(array)
    if array is not None and array.ndim == 1 and _fits(array, dtype):  # type: ignore[arg-type]
        return _from_numpy(array, kind)
    return pa.array(values, type=kind, from_pandas=True)  # odd input: pyarrow decides


def _floats_or_none(array: np.ndarray) -> np.ndarray | None:
    """Python numbers and ``None`` (null) as floats; None for anything else."""
    numbers = (v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in array)
    if not all(numbers):
        return None
    return np.array([np.nan if v is None else v for v in array], dtype=np.float64)


def _fits(array: np.ndarray, dtype: type) -> bool:
    """True when casting ``array`` to ``dtype`` loses nothing ``pa.array`` would refuse."""
    target = np.dtype(dtype)
    if array.dtype == target or (array.dtype.kind == "f" and target.kind == "f"):
        return True
    if array.dtype.kind in "biu" and target.kind == "f":
        return True
    if array.dtype.kind in "iu" and target.kind == "i":
        info = np.iinfo(target.name)
        return not array.size or (info.min <= array.min() and array.max() <= info.max)
    return False


def _from_numpy(array: np.ndarray, kind: pa.DataType) -> pa.Array:
    with np.errstate(over="ignore"):  # float64 → float32 overflows to ±inf, as in pyarrow
        data: np.ndarray = np.ascontiguousarray(array, dtype=_NUMPY[kind])
    valid = None
    nulls = 0
    if data.dtype.kind == "f":
        finite_or_inf = ~np.isnan(data)
        nulls = int(data.size - np.count_nonzero(finite_or_inf))
        if nulls:
            valid = pa.py_buffer(np.packbits(finite_or_inf, bitorder="little"))
    return pa.Array.from_buffers(kind, len(data), [valid, pa.py_buffer(data)], null_count=nulls)


def _strings(values: Any) -> pa.Array:
    """A string array from ``str``/``None`` items, built from one bytes buffer."""
    items = values.tolist() if isinstance(values, np.ndarray) else list(values)
    if not all(v is None or isinstance(v, str) for v in items):
        return pa.array(items, type=pa.string(), from_pandas=True)  # odd input: pyarrow decides
    encoded = [b"" if v is None else v.encode() for v in items]
    offsets = np.zeros(len(items) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    if offsets[-1] >= 2**31:
        return pa.array(items, type=pa.string())
    present = np.array([v is not None for v in items], dtype=bool)
    nulls = int(len(items) - np.count_nonzero(present))
    valid = pa.py_buffer(np.packbits(present, bitorder="little")) if nulls else None
    buffers = [valid, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(b"".join(encoded))]
    return pa.Array.from_buffers(pa.string(), len(items), buffers, null_count=nulls)
