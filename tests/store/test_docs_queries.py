"""docs/queries.md runs as written: its Python and SQL blocks on a copy of the sample runs, each
result checked against the runs read one at a time with ``gradlens.open_run`` and pandas."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gradlens.store import open_run
from tests.conftest import ROOT

duckdb = pytest.importorskip(
    "duckdb", reason="the DuckDB examples of docs/queries.md need duckdb (in the dev extra)"
)

DOC = ROOT / "docs" / "queries.md"
_BLOCK = re.compile(r"^```(\w+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def _blocks(language: str) -> list[str]:
    return [code for lang, code in _BLOCK.findall(DOC.read_text()) if lang == language]


@pytest.fixture
def runs(tmp_path, monkeypatch) -> Path:
    """``runs/`` in the working directory: the folder the examples name."""
    shutil.copytree(ROOT / "sample_runs", tmp_path / "runs")
    monkeypatch.chdir(tmp_path)
    return tmp_path / "runs"


def _metric(runs: Path, table: str, metric: str) -> dict[str, pd.DataFrame]:
    """Each run's rows of one metric, read by ``open_run`` (sorted by step)."""
    return {
        path.name: open_run(path).table(table, filters=[("metric", "==", metric)])
        for path in sorted(runs.iterdir())
    }


def _last_loss(runs: Path) -> pd.Series:
    last = {name: df.iloc[-1] for name, df in _metric(runs, "scalars", "loss").items()}
    return pd.Series({name: row.value for name, row in last.items()}, name="last_loss")


def _check_last_loss(result: pd.DataFrame, runs: Path) -> None:
    losses = _metric(runs, "scalars", "loss")
    assert result.run.tolist() == sorted(losses)
    for row in result.itertuples():
        assert row.last_step == losses[row.run].step.iloc[-1]
        np.testing.assert_array_equal(row.last_loss, losses[row.run].value.iloc[-1])


def _check_max_grad_norm(result: pd.DataFrame, runs: Path) -> None:
    grads = _metric(runs, "layers", "grad_norm")
    assert result.run.tolist() == sorted(result.run) and set(result.run) == set(grads)
    for name, df in grads.items():
        finite = df[np.isfinite(df.value)]
        expected = finite.groupby("layer").value.max().sort_values(ascending=False)
        got = result[result.run == name]
        assert got.layer.tolist() == expected.index.tolist(), name
        np.testing.assert_array_equal(got.max_grad_norm, expected.to_numpy())
        at = finite.set_index(["layer", "step"]).value
        np.testing.assert_array_equal(at.loc[list(zip(got.layer, got.at_step))], expected)


def _check_first_nonfinite(result: pd.DataFrame, runs: Path) -> None:
    expected = {
        name: int(df.step[~np.isfinite(df.value)].min())
        for name, df in _metric(runs, "scalars", "grad_norm").items()
        if not np.isfinite(df.value).all()
    }
    assert expected, "no sample run has a non-finite gradient: the query is not exercised"
    assert dict(zip(result.run, result.first_nonfinite_step)) == expected


def _check_meta(result: pd.DataFrame, runs: Path) -> None:
    metas = {path.name: open_run(path).meta for path in runs.iterdir()}
    assert result.run.tolist() == sorted(metas, key=lambda name: metas[name]["start_time"])
    last = _last_loss(runs)
    for row in result.itertuples():
        meta = metas[row.run]
        assert (row.status, row.steps) == (meta["status"], meta["steps"])
        assert row.probes == meta["config"]["probes"]
        assert row.seconds == pytest.approx(meta["end_time"] - meta["start_time"], abs=0.051)
        np.testing.assert_array_equal(row.last_loss, last[row.run])


# Each query of the doc, known by the columns it returns.
SQL_CHECKS: dict[tuple[str, ...], Callable[[pd.DataFrame, Path], None]] = {
    ("run", "last_step", "last_loss"): _check_last_loss,
    ("run", "layer", "max_grad_norm", "at_step"): _check_max_grad_norm,
    ("run", "first_nonfinite_step"): _check_first_nonfinite,
    ("run", "status", "steps", "probes", "seconds", "last_loss"): _check_meta,
}


def test_every_sql_block_runs_and_returns_what_open_run_reads(runs):
    con = duckdb.connect()
    checked = []
    for block in _blocks("sql"):
        statements = con.extract_statements(block)
        for statement in statements:
            result = con.execute(statement)
        if statements[-1].type != duckdb.StatementType.SELECT:
            continue  # the views the queries use
        frame = result.fetchdf()
        columns = tuple(frame.columns)
        assert columns in SQL_CHECKS, f"a query in {DOC.name} has no check: {columns}"
        SQL_CHECKS[columns](frame, runs)
        checked.append(columns)
    assert sorted(checked) == sorted(SQL_CHECKS)  # each query checked, none left untested


def test_python_blocks_run_and_agree_with_open_run(runs):
    namespace: dict = {}
    for number, code in enumerate(_blocks("python")):
        exec(compile(code, f"{DOC}:python block {number}", "exec"), namespace)
    expected = _last_loss(runs)
    for name in ("last_loss", "last_loss_sql"):
        got = namespace[name].sort_index()
        assert got.index.tolist() == expected.index.tolist(), name
        np.testing.assert_array_equal(got.to_numpy(), expected.to_numpy())

    curves = namespace["curves"]
    for name, df in _metric(runs, "scalars", "loss").items():
        np.testing.assert_array_equal(curves[name].loc[df.step], df.value)

    max_grad_norm = namespace["max_grad_norm"]
    assert set(max_grad_norm.index.get_level_values("run")) == {"mlp", "mlp-spiky"}
    for name, df in _metric(runs, "layers", "grad_norm").items():
        if name in {"mlp", "mlp-spiky"}:
            pd.testing.assert_series_equal(
                max_grad_norm.loc[name], df.groupby("layer").value.max(), check_names=False
            )
