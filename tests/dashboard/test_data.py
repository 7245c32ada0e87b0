"""Cached reads: the layer matrix, fast column reads and the compacted layout they rely on."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from gradlens.dashboard import data as data_module
from gradlens.dashboard.data import Cache, RunData, build_layer_matrix
from gradlens.store import RunWriter, open_run, write_meta
from gradlens.store.columns import distinct, file_info, read_columns, table_files
from gradlens.store.writer import ROW_GROUP_MIN
from tests.dashboard.craft import LAYERS, craft_layer_run


def _layers_table(steps, layers, metric="grad_norm"):
    rows = [(s, layer, metric, float(s * 10 + i)) for s in steps for i, layer in enumerate(layers)]
    return {k: [r[j] for r in rows] for j, k in enumerate(("step", "layer", "metric", "value"))}


def test_build_layer_matrix_keeps_first_seen_order_and_gaps():
    table = pa.table(
        {
            "step": [5, 5, 7, 9, 9],
            "layer": pa.array(["z", "a", "z", "a", "z"]).dictionary_encode(),
            "value": np.array([1, 2, 3, 4, 5], dtype=np.float32),
        }
    )
    m = build_layer_matrix(table, "grad_norm")
    assert m.layers == ["z", "a"] and m.steps.tolist() == [5, 7, 9]
    np.testing.assert_array_equal(m.values, [[1, 3, 5], [2, np.nan, 4]])
    assert m.window(6, 9).steps.tolist() == [7, 9]
    assert m.row("a")["value"].tolist()[::2] == [2.0, 4.0]


def test_matrix_from_row_groups_of_one_layer_each_matches_a_dense_oracle():
    """The compacted layout (one layer per batch, a one-name dictionary) copies whole rows;
    a batch with a repeated or missing step, or a shared dictionary, is scattered."""
    rng = np.random.default_rng(0)
    oracle = np.full((3, 8), np.nan, dtype=np.float32)
    batches = []
    for code, (name, steps) in enumerate(
        [("a", [0, 1, 2, 3, 4, 5, 6, 7]), ("b", [0, 1, 3, 4]), ("c", [2, 3, 3, 4, 6])]
    ):
        values = rng.random(len(steps)).astype(np.float32)
        for step, value in zip(steps, values, strict=True):
            oracle[code, step] = value  # a repeated step keeps its last value
        one_name = pa.DictionaryArray.from_arrays(np.zeros(len(steps), np.int32), [name])
        batches.append(pa.table({"step": steps, "layer": one_name, "value": values}))
    shared = pa.array(["a", "b", "c"])  # one dictionary over every batch: codes per row
    codes = pa.DictionaryArray.from_arrays(np.array([1, 1], np.int32), shared)
    batches.append(pa.table({"step": [5, 6], "layer": codes, "value": np.float32([7, 8])}))
    oracle[1, 5:7] = [7, 8]
    m = build_layer_matrix(pa.concat_tables(batches), "x")
    assert m.layers == ["a", "b", "c"] and m.steps.tolist() == list(range(8))
    np.testing.assert_array_equal(m.values, oracle)


def test_sparse_steps_use_sorted_unique_columns():
    table = pa.table({"step": [10**9, 0], "layer": ["a", "a"], "value": [1.0, 2.0]})
    m = build_layer_matrix(table, "x")
    assert m.steps.tolist() == [0, 10**9] and m.values.tolist() == [[2.0, 1.0]]


def test_matrix_and_curves_match_the_store(dash_runs):
    data = RunData(open_run(dash_runs / "tiny-gpt"), Cache())
    wide = (
        open_run(dash_runs / "tiny-gpt")
        .table("layers", filters=[("metric", "==", "grad_norm")])
        .pivot(index="step", columns="layer", values="value")
    )
    m = data.layer_matrix("grad_norm")
    assert m.layers[:2] == ["tok.weight", "pos.weight"]  # model order, not alphabetical
    np.testing.assert_allclose(m.values, wide[m.layers].to_numpy().T)
    curves = data.layer_curves("pos.weight")
    assert sorted(set(curves["metric"])) == ["grad_norm", "param_norm", "update_ratio"]
    grad = curves[curves["metric"] == "grad_norm"]["value"].to_numpy()
    np.testing.assert_allclose(grad, wide["pos.weight"].to_numpy(), rtol=1e-6)
    assert curves["time"].notna().all()


@pytest.mark.parametrize("compact", [True, False])
def test_a_matrix_of_many_layers_read_in_parts_matches_the_store(tmp_path, compact):
    """Runs with many layers are read as groups of layers in parallel: same rows, same
    order (the model's), whether the table is compacted or still in segments."""
    names = [f"blocks.{i}.{kind}" for i in range(6) for kind in ("weight", "bias")]
    rng = np.random.default_rng(3)
    (tmp_path / "many").mkdir()
    write_meta(tmp_path / "many", {"name": "many", "status": "finished", "steps": 50})
    writer = RunWriter(tmp_path / "many")
    for start in (0, 25):  # two segments, each step-major
        steps = np.arange(start, start + 25)
        values = rng.random((len(steps), len(names)))
        writer.write(
            "layers",
            {
                "step": np.repeat(steps, len(names)).tolist(),
                "layer": names * len(steps),
                "metric": ["grad_norm"] * values.size,
                "value": values.ravel().tolist(),
            },
        )
    writer.close(compact=compact)
    run = open_run(tmp_path / "many")
    wide = run.table("layers").pivot(index="step", columns="layer", values="value")
    m = RunData(run, Cache()).layer_matrix("grad_norm")
    assert len(names) >= 2 * data_module.READ_PARTS and m.layers == names
    assert m.steps.tolist() == list(range(50))
    np.testing.assert_allclose(m.values, wide[names].to_numpy().T, rtol=1e-6)


def test_heatmap_buckets_keep_the_layer_spike(dash_runs):
    data = RunData(open_run(dash_runs / "layered"), Cache())
    cells = data.layer_matrix("grad_norm").heatmap(buckets=20)
    assert cells.shape == (4, 20) and list(cells.index) == LAYERS
    assert cells.loc["body.0.weight"].idxmax() == 120  # the bucket starting at the spike
    zoom = data.layer_matrix("grad_norm").window(100, 139).heatmap(buckets=500)
    assert list(zoom.columns) == list(range(100, 140))


def test_a_run_being_written_is_reread(runs_dir):
    run_dir = craft_layer_run(runs_dir, "live", status="running", steps=50)
    cache = Cache()
    assert len(RunData(open_run(run_dir), cache).scalar("loss")) == 50
    writer = RunWriter(run_dir, strict=True)
    writer.write(
        "scalars", {"step": [50, 51], "metric": ["loss"] * 2, "index": [0, 0], "value": [1, 2]}
    )
    writer.close(compact=False)
    fresh = RunData(open_run(run_dir), cache).scalar("loss")
    assert fresh["step"].tolist()[-2:] == [50, 51]


def test_cache_evicts_least_recently_used():
    cache = Cache(max_bytes=3000)
    for key in "abc":
        cache.get(key, lambda: np.zeros(100))  # 800 bytes each
    cache.get("a", lambda: pytest.fail("cached"))
    cache.get("d", lambda: np.zeros(200))  # 1600 bytes: evicts b (least recent)
    assert cache.peek("b") is None and cache.peek("a") is not None


def test_compaction_lays_out_one_metric_and_layer_per_row_group(runs_dir):
    """Long runs: a (metric, layer) read touches only its own row groups."""
    from tests.store.test_store import _new_run

    run_dir = _new_run(runs_dir, "long")
    writer = RunWriter(run_dir, strict=True)
    steps = ROW_GROUP_MIN + 100
    for block in range(2):  # two segments, so compaction runs
        part = range(block * steps // 2, (block + 1) * steps // 2)
        for metric in ("update_norm", "grad_norm"):
            writer.write("layers", _layers_table(part, ["w2", "w1"], metric))
        writer.sync()
    writer.close()
    files = table_files(run_dir, "layers")
    assert len(files) == 1 and files[0].name.startswith("compact-")
    groups = file_info(files[0]).groups
    assert all(g.bounds["metric"][0] == g.bounds["metric"][1] for g in groups)
    assert all(g.bounds["layer"][0] == g.bounds["layer"][1] for g in groups)
    assert [g.bounds["metric"][0] for g in groups] == ["grad_norm"] * 2 + ["update_norm"] * 2
    assert distinct(files, "layer") == ["w2", "w1"]  # first seen, from statistics alone
    # the store still reads rows back by step, layers in model order within a step
    df = open_run(run_dir).table("layers", filters=[("metric", "==", "grad_norm")])
    assert df["step"].is_monotonic_increasing and df["layer"].tolist()[:2] == ["w2", "w1"]
    one = read_columns(files, ["step", "value"], {"metric": "grad_norm", "layer": "w1"})
    expected = df[df["layer"] == "w1"]["value"].to_numpy()
    np.testing.assert_array_equal(one.column("value").to_numpy(), expected)


def test_read_columns_filters_like_the_store(dash_runs):
    run = open_run(dash_runs / "mlp-spiky")
    files = table_files(run.path, "layers")
    got = read_columns(
        files, ["step", "layer", "value"], {"metric": ["grad_norm", "param_norm"]}, (100, 150)
    ).to_pandas()
    got["layer"] = got["layer"].astype(str)  # categorical sorts by first-seen, not by name
    want = run.table("layers")
    want = want[want["metric"].isin(["grad_norm", "param_norm"]) & want["step"].between(100, 150)]
    assert len(got) == len(want) > 0
    pd.testing.assert_series_equal(
        got.sort_values(["step", "layer"])["value"].reset_index(drop=True),
        want.sort_values(["step", "layer"])["value"].reset_index(drop=True),
    )
    assert read_columns(files, ["value"], {"metric": "nope"}).num_rows == 0


def test_relative_matrix_is_each_layer_over_its_own_ema_baseline():
    from gradlens.dashboard.data import LayerMatrix
    from gradlens.dashboard.smoothing import ema

    rng = np.random.default_rng(0)
    values = np.vstack([0.01 * np.exp(0.05 * rng.standard_normal(200)), np.full(200, 5.0)])
    values[0, 150] *= 34.0  # a small layer spiking: tiny in raw terms, 34x its own baseline
    matrix = LayerMatrix("grad_norm", ["small", "big"], np.arange(200), values.astype(np.float32))
    ratio = matrix.relative(0.95).values
    baseline = ema(values[0, :150], 0.95)[-1]  # TensorBoard's debiased EMA is the same average
    assert ratio[0, 150] == pytest.approx(values[0, 150] / baseline, rel=1e-4)
    assert ratio[0, 150] > 25 and np.nanmax(ratio[1]) == pytest.approx(1.0)
    assert np.isnan(ratio[:, 0]).all()  # nothing before the first value
    assert np.nanargmax(matrix.relative().heatmap(50).to_numpy().max(axis=1)) == 0
    assert matrix.last_steps(50).tolist() == list(range(3, 200, 4))
    with pytest.raises(ValueError):
        matrix.relative(1.0)
