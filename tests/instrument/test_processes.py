"""Child processes under ``gradlens watch``: forked children leave the parent's run alone;
spawned workers (``mp.spawn`` DDP, Hogwild with spawn) are recorded as runs of their own; a
script that trains only in forked children is told why its run has no step; a Lens opened in a
worker records that worker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gradlens
from tests.conftest import cli_env

SCRIPT = Path(__file__).parents[1] / "scripts" / "child_trainers.py"


def _watch(tmp_path: Path, *args: str, status: str = "off") -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "-m", "gradlens", "watch", "--runs-dir", str(tmp_path / "runs"),
        "--name", "parent", "--status", status, str(SCRIPT), *args,
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=cli_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_forked_trainers_are_named_as_the_reason_for_no_steps(tmp_path):
    """Hogwild's default: workers forked from the watched process are not recorded."""
    done = _watch(tmp_path, "hogwild", "fork")
    assert "exit codes [0, 0]" in done.stdout
    run = gradlens.open_run(tmp_path / "runs" / "parent")
    assert run.status == "finished" and run.steps == 0
    why = run.meta["unavailable"]["step capture"]
    assert "child processes (2 with 'fork')" in why and "torchrun" in why
    assert why in done.stderr
    report = subprocess.run(
        [sys.executable, "-m", "gradlens", "report", str(run.path)],
        capture_output=True, text=True, env=cli_env(), timeout=120,
    )  # fmt: skip
    assert "child processes" in " ".join(report.stdout.split())
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["parent"]


def test_spawned_workers_are_recorded_as_runs_of_their_own(tmp_path):
    """Workers of the spawn context: one run each, ``failed`` with the exit code of a worker
    that raised (after the steps it took), ``finished`` for the other; a third worker that only
    produced data leaves no run."""
    done = _watch(tmp_path, "hogwild", "spawn", "--fail")
    assert "exit codes [0, 1]" in done.stdout
    runs = tmp_path / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["parent", "parent-w0", "parent-w1"]
    parent = gradlens.open_run(runs / "parent")
    assert parent.steps == 0
    why = parent.meta["unavailable"]["step capture"]
    assert "2 spawned workers that trained are recorded as runs parent-w0, parent-w1" in why
    ok, failed = gradlens.open_run(runs / "parent-w0"), gradlens.open_run(runs / "parent-w1")
    assert (ok.status, ok.steps) == ("finished", 6)
    assert (failed.status, failed.steps, failed.meta["exit_code"]) == ("failed", 3, 1)
    assert ok.meta["config"]["probes"] == parent.meta["config"]["probes"]


def test_mp_spawn_ddp_ranks_record_their_own_losses_and_the_averaged_gradient(tmp_path):
    """The DDP tutorial's shape: ``mp.spawn(worker, nprocs=2)``, each rank calling
    ``init_process_group(rank=…)`` itself; each rank's run holds its losses and the norms of
    the all-reduced gradient, as the rank computed them."""
    out = tmp_path / "out"
    out.mkdir()
    assert "ddp done" in _watch(tmp_path, "ddp", str(out)).stdout
    for rank in range(2):
        trace = json.loads((out / f"rank{rank}.json").read_text())
        run = gradlens.open_run(tmp_path / "runs" / f"parent-w{rank}")
        assert run.status == "finished"
        scalars = run.table("scalars").pivot_table(index="step", columns="metric", values="value")
        np.testing.assert_allclose(scalars.loss, trace["loss"], rtol=1e-6)
        np.testing.assert_allclose(scalars.grad_norm, trace["grad_norm"], rtol=1e-5)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_lens_in_each_worker_records_that_worker(tmp_path, method):
    _watch(tmp_path, "hogwild", method, "--lens", str(tmp_path / "workers"))
    for rank in range(2):
        worker = gradlens.open_run(tmp_path / "workers" / f"worker-{rank}")
        assert worker.status == "finished" and worker.steps == 6
        losses = worker.table("scalars", filters=[("metric", "==", "loss")])
        assert sorted(losses.step) == list(range(6))
    assert gradlens.open_run(tmp_path / "runs" / "parent").steps == 0


def test_a_forked_child_neither_records_nor_closes_the_parents_run(tmp_path):
    done = _watch(tmp_path, "os_fork", status="plain")
    assert "child exit 0" in done.stdout
    assert done.stderr.count("gradlens: run 'parent' finished after 8 steps") == 1
    assert done.stderr.count("look at it") == 1  # the child ends quietly
    run = gradlens.open_run(tmp_path / "runs" / "parent")
    assert run.status == "finished" and run.steps == 8  # the parent's 4 + 4, not the child's 3
    losses = run.table("scalars", filters=[("metric", "==", "loss")])
    assert sorted(losses.step) == list(range(8))
    assert "step capture" not in run.meta.get("unavailable", {})
