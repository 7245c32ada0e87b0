"""Child processes under ``gradlens watch``: forked children leave the parent's run alone;
a script that trains only in child processes is told why its run has no step; a Lens opened
in a worker records that worker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_workers_that_train_are_named_as_the_reason_for_no_steps(tmp_path, method):
    done = _watch(tmp_path, "hogwild", method)
    assert "exit codes [0, 0]" in done.stdout
    run = gradlens.open_run(tmp_path / "runs" / "parent")
    assert run.status == "finished" and run.steps == 0
    why = run.meta["unavailable"]["step capture"]
    assert f"child processes (2 with '{method}')" in why and "torchrun" in why
    assert why in done.stderr
    report = subprocess.run(
        [sys.executable, "-m", "gradlens", "report", str(run.path)],
        capture_output=True, text=True, env=cli_env(), timeout=120,
    )  # fmt: skip
    assert "child processes" in " ".join(report.stdout.split())


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
