"""The writer's columns become Arrow arrays exactly as ``pa.array(from_pandas=True)`` made them,
without the training process importing pandas."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pytest

from gradlens.store import open_run, write_meta
from gradlens.store.schema import Coded, arrow_array

CASES = [
    (np.array([1.0, np.nan, np.inf, -np.inf, 1e300, 3e-46]), pa.float32()),
    (np.array([1.0, np.nan, np.inf, 0.1]), pa.float64()),
    (np.arange(12.0).reshape(3, 4)[:, 1], pa.float64()),  # a strided column of a chunk's rows
    (np.arange(12.0).reshape(3, 4)[:, 2], pa.float32()),
    (np.array([1, 2, -3]), pa.int32()),
    (np.array([1, 2**40], dtype=np.int64), pa.int64()),
    (np.array([1, 2], dtype=np.int32), pa.float64()),
    (np.array([True, False]), pa.float64()),
    ([1.0, None, 2.0], pa.float64()),
    ([1, 2, 3], pa.int64()),
    ([0.5, 1.5], pa.float32()),
    (np.array(["a", "bé", ""]), pa.string()),
    (["x", None, "обучение"], pa.string()),
    (np.array(["x", None], dtype=object), pa.string()),
    (np.array([], dtype=float), pa.float64()),
    (np.array([], dtype=np.int64), pa.int32()),
    ([], pa.string()),
]


@pytest.mark.parametrize(("values", "kind"), CASES, ids=lambda v: str(v)[:20])
def test_same_array_as_pyarrow_made(values, kind):
    expected = pa.array(values, type=kind, from_pandas=True)
    got = arrow_array(values, kind)
    assert got.type == kind
    assert got.null_count == expected.null_count  # NaN and None are null, as before
    assert got.equals(expected)


@pytest.mark.parametrize(
    ("values", "kind"),
    [(np.array([1.5]), pa.int32()), (np.array([2**40]), pa.int32()), (["a", 1], pa.string())],
)
def test_a_cast_pyarrow_refuses_is_still_refused(values, kind):
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError)):
        pa.array(values, type=kind, from_pandas=True)
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError)):
        arrow_array(values, kind)


def test_coded_strings_decode_to_their_labels():
    coded = Coded(np.array([0, 1, 1, 0]), ["fc1.weight", "héad"])
    got = arrow_array(coded, pa.string())
    assert got.to_pylist() == ["fc1.weight", "héad", "héad", "fc1.weight"]


def test_writing_and_compacting_a_run_never_imports_pandas(tmp_path):
    """pyarrow's ``pa.array``, ``pa.scalar`` and ``to_numpy`` import pandas: ~0.7 s holding the
    GIL on the writer thread of a training process, which showed in the step times."""
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        from gradlens.store import RunWriter
        from gradlens.store.schema import Coded
        w = RunWriter({str(tmp_path)!r}, strict=True, min_interval=0.0)
        for step in range(3):
            w.write("scalars", {{"step": np.array([step, step]),
                                "metric": Coded(np.array([0, 1]), ["loss", "lr"]),
                                "index": np.array([0, 0]), "value": np.array([np.nan, 0.1])}})
            w.write("layers", {{"step": np.array([step] * 2), "layer": ["a", "b"],
                               "metric": ["grad_norm"] * 2, "value": np.array([1.0, 2.0])}})
            w.write("events", {{"step": [step], "kind": ["spike"], "metric": ["loss"],
                               "layer": [""], "value": [1.0], "baseline": [np.nan],
                               "ratio": [None], "detail": ["é"]}})
            w.sync()
        w.close(compact=True)
        print("pandas" in sys.modules)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "False", out.stderr
    write_meta(tmp_path, {"name": "r", "status": "finished", "start_time": 1.0})
    run = open_run(tmp_path)  # the rows are all there, NaN as before
    scalars = run.table("scalars")
    assert len(scalars) == 6 and scalars["value"].isna().sum() == 3
    assert run.table("layers")["layer"].tolist() == ["a", "b"] * 3
    events = run.table("events")
    assert events["detail"].tolist() == ["é"] * 3 and events["ratio"].isna().all()
