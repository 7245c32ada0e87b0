"""``long_rows`` and ``check_rows``: rows for the long tables, checked against the schema
where they are built; each kind of bad row is one ``ValueError`` naming table and column."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gradlens.store import RunWriter, create_run_dir, open_run, write_meta
from gradlens.store.rows import check_rows, long_rows
from gradlens.store.schema import SCHEMAS, Coded, to_arrow


def test_context_columns_are_repeated_on_every_row():
    rows = long_rows(
        "hessian", 7, metric=["top_eigenvalue"] * 2, layer="", index=[0, 1], value=[3.0, 1.5]
    )
    assert rows == {
        "step": [7, 7],
        "metric": ["top_eigenvalue", "top_eigenvalue"],
        "layer": ["", ""],
        "index": [0, 1],
        "value": [3.0, 1.5],
    }


def test_only_scalars_make_one_row_and_empty_lists_none():
    assert long_rows("scalars", 3, metric="probe_seconds.x", index=0, value=0.25) == {
        "step": [3],
        "metric": ["probe_seconds.x"],
        "index": [0],
        "value": [0.25],
    }
    assert long_rows("collapse", 3, metric=[], value=[]) == {"step": [], "metric": [], "value": []}


def test_numpy_columns_become_python_values_and_nan_is_kept():
    rows = long_rows(
        "landscape",
        np.int64(2),
        slice="filter",
        metric=np.array(["loss", "roughness"]),
        alpha=np.array([0.5, math.nan]),
        beta=np.array([0.0, math.nan]),
        value=np.array([1.25, 0.1]),
    )
    assert rows["metric"] == ["loss", "roughness"] and type(rows["value"][0]) is float
    assert rows["step"] == [2, 2] and math.isnan(rows["alpha"][1])
    table = to_arrow("landscape", rows)  # what the writer builds from them
    assert table.column("value").to_pylist() == [1.25, 0.1]
    assert table.column("alpha").to_pylist() == [0.5, None]


def test_every_table_accepts_rows_of_its_own_columns():
    samples = {"int64": 1, "int32": 0, "string": "a", "double": 0.5, "float": 0.5}
    for table, schema in SCHEMAS.items():
        columns = {f.name: [samples[str(f.type)]] * 2 for f in schema if f.name != "step"}
        rows = long_rows(table, 4, **columns)
        assert to_arrow(table, rows).num_rows == 2, table


def test_rows_written_by_the_writer_read_back_unchanged(tmp_path):
    run_dir = create_run_dir(tmp_path, "rows")
    write_meta(run_dir, {"name": run_dir.name, "status": "finished", "start_time": 1.0})
    writer = RunWriter(run_dir, strict=True)
    writer.write("collapse", long_rows("collapse", 9, metric=["nc1", "nc3"], value=[0.5, 0.125]))
    writer.close()
    df = open_run(run_dir).table("collapse")
    assert df.step.tolist() == [9, 9] and df.value.tolist() == [0.5, 0.125]


@pytest.mark.parametrize(
    ("table", "columns", "message"),
    [
        ("colapse", {"metric": "nc1", "value": 1.0}, r"unknown table 'colapse'; known: collapse, "),
        ("collapse", {"metric": "nc1"}, r"table 'collapse' rows lack column 'value'; its columns"),
        (
            "collapse",
            {"metric": "nc1", "value": 1.0, "layer": ""},
            r"table 'collapse' has no column 'layer'; its columns: step, metric, value$",
        ),
        (
            "hessian",
            {"metric": ["a", "b"], "layer": "", "index": [0, 1, 2], "value": [1.0, 2.0]},
            r"table 'hessian' column 'index' has 3 rows, column 'metric' has 2$",
        ),
        (
            "collapse",
            {"metric": ["nc1"], "value": ["big"]},
            r"table 'collapse' column 'value' \(double\): Could not convert 'big'",
        ),
        (
            "softmax",
            {"metric": ["ghost_r"], "layer": [3], "value": [1.0]},
            r"table 'softmax' column 'layer' \(string\)",
        ),
        (
            "spectrum",
            {"kind": "density", "index": [2**40], "x": [0.0], "value": [1.0]},
            r"table 'spectrum' column 'index' \(int32\)",
        ),
    ],
    ids=["unknown-table", "missing", "unknown-column", "lengths", "float", "string", "int32"],
)
def test_bad_rows_are_one_value_error_naming_table_and_column(table, columns, message):
    with pytest.raises(ValueError, match=message) as caught:
        long_rows(table, 1, **columns)
    assert "\n" not in str(caught.value)


def test_check_rows_takes_columns_built_by_hand():
    check_rows("user", {"step": [1, 2], "metric": ["a", "b"], "value": [0.5, None]})
    check_rows("user", {"step": [1], "metric": Coded(np.array([0]), ["a"]), "value": [0.5]})
    with pytest.raises(ValueError, match=r"table 'user' column 'metric' must be a list"):
        check_rows("user", {"step": [1], "metric": "a", "value": [0.5]})
    with pytest.raises(
        ValueError, match=r"table 'user' column 'value' has 1 rows, column 'step' has 2"
    ):
        check_rows("user", {"step": [1, 2], "metric": ["a", "b"], "value": [0.5]})
    with pytest.raises(ValueError, match=r"table 'user': rows must map column"):
        check_rows("user", [[1], ["a"], [0.5]])  # type: ignore[arg-type]


def test_the_store_builds_rows_without_torch():
    import subprocess
    import sys

    code = (
        "import sys; from gradlens.store.rows import long_rows; "
        "long_rows('user', 0, metric='a', value=1.0); assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
