"""Column-pruned reads that rebuild constant columns from row-group statistics."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gradlens.store.columns import read_columns


def test_nan_values_survive_column_pruned_reads(tmp_path):
    """A NaN makes a row group's min/max say nothing; the values must be decoded, not rebuilt."""
    path = tmp_path / "part-000000.parquet"
    table = pa.table(
        {
            "step": [0, 1, 2],
            "metric": ["loss"] * 3,
            "index": pa.array([0] * 3, pa.int32()),
            "value": [float("nan"), 1.0, 1.0],
        }
    )
    pq.write_table(table, path)
    got = read_columns([path], ["step", "value"]).column("value").to_pylist()
    assert np.isnan(got[0]) and got[1:] == [1.0, 1.0]
