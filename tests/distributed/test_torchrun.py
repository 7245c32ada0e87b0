"""torchrun --nproc_per_node=2 with gloo on CPU: DDP and FSDP2 runs against one process on the
same global batch — per-layer norms, Hessian top eigenvalues and neural-collapse metrics."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import gradlens
from tests.conftest import SCRIPTS, cli_env, gradlens_cli

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

PROBES = [
    "--probe",
    "hessian.every=4",
    "--probe",
    "hessian.k=3",
    "--probe",
    "hessian.tol=1e-6",
    "--probe",
    "hessian.trace=false",
    "--probe",
    "collapse.every=4",
]


def _torchrun(runs_dir, name, *args, script="distributed_train.py", timeout=240):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--standalone",
        "-m",
        "gradlens",
        "watch",
        "--runs-dir",
        str(runs_dir),
        "--name",
        name,
        "--status",
        "off",
        *PROBES,
        str(SCRIPTS / script),
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=cli_env())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    runs_dir = tmp_path_factory.mktemp("dist") / "runs"
    single = gradlens_cli(
        "watch",
        "--runs-dir",
        str(runs_dir),
        "--name",
        "single",
        "--status",
        "off",
        *PROBES,
        str(SCRIPTS / "distributed_train.py"),
        "ddp",
    )
    assert single.returncode == 0, single.stderr
    for mode in ("ddp", "fsdp"):
        result = _torchrun(runs_dir, mode, mode)
        assert result.returncode == 0, result.stderr[-3000:]
    return {name: gradlens.open_run(runs_dir / name) for name in ("single", "ddp", "fsdp")}


def _layers(run, metric):
    df = run.table("layers", filters=[("metric", "==", metric)])
    return df.pivot(index="step", columns="layer", values="value").sort_index(axis=1)


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_one_run_folder_per_torchrun_and_rank_rows(runs, mode):
    run = runs[mode]
    assert run.status == "finished" and run.meta["world_size"] == 2 and run.steps == 8
    assert not list(run.path.parent.glob(".gradlens-*"))  # the pointer file is gone
    ranks = run.table("ranks")
    assert set(ranks["rank"]) == {0, 1}
    loss = ranks[ranks.metric == "loss"].pivot(index="step", columns="rank", values="value")
    assert len(loss) == 8 and not np.allclose(loss[0], loss[1])  # each rank's own batch


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_per_layer_norms_equal_one_process_on_the_global_batch(runs, mode):
    for metric in ("grad_norm", "param_norm", "update_norm", "nonfinite"):
        single, multi = _layers(runs["single"], metric), _layers(runs[mode], metric)
        assert list(single.columns) == list(multi.columns)
        np.testing.assert_allclose(multi.to_numpy(), single.to_numpy(), rtol=1e-5, atol=1e-7)
    loss = [
        r.table("scalars", filters=[("metric", "==", "loss")])["value"].to_numpy()
        for r in (runs["single"], runs[mode])
    ]
    np.testing.assert_allclose(loss[1], loss[0], rtol=1e-6)  # the mean over ranks


@pytest.mark.parametrize("mode,rtol", [("ddp", 1e-5), ("fsdp", 1e-4)])
def test_hessian_top_eigenvalues_equal_one_process(runs, mode, rtol):
    def top(run):
        h = run.table("hessian", filters=[("metric", "==", "top_eigenvalue")])
        return h.sort_values(["step", "index"])["value"].to_numpy()

    single, multi = top(runs["single"]), top(runs[mode])
    assert len(single) == 6  # 2 probes × top-3
    np.testing.assert_allclose(multi, single, rtol=rtol)


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_neural_collapse_equal_one_process(runs, mode):
    def nc(run):
        return run.table("collapse").pivot(index="step", columns="metric", values="value")

    single, multi = nc(runs["single"]), nc(runs[mode])
    assert {"nc1", "cdnv", "nc2_etf_distance", "nc3", "nc4"} <= set(single.columns)
    np.testing.assert_allclose(
        multi[single.columns].to_numpy(), single.to_numpy(), rtol=1e-5, atol=1e-9
    )


def test_a_dying_rank_hangs_nobody_and_flushed_rows_stay(tmp_path):
    runs_dir = tmp_path / "runs"
    result = _torchrun(runs_dir, "dies", script="rank_dies.py", timeout=180)
    assert result.returncode != 0
    run = gradlens.open_run(runs_dir / "dies")
    assert run.status in ("failed", "crashed", "interrupted")
    steps = sorted(run.table("scalars")["step"].unique())
    assert steps and steps == list(range(len(steps)))  # a readable prefix of the run
