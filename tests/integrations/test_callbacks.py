"""The framework callbacks against ``gradlens watch`` on the same seeded training: same rows,
the framework's own metrics in the ``user`` table at the documented steps, training unchanged
(test dependencies: the ``clients`` extra)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import gradlens
from tests.conftest import cli_env
from tests.integrations.harness import (
    HERE,
    assert_same_tables,
    assert_training_unchanged,
    run_trio,
    scalar,
    user,
)

pytestmark = pytest.mark.slow


def test_lightning_callback_records_what_watch_records(tmp_path):
    pytest.importorskip("lightning")
    trio = run_trio(tmp_path, "lightning_fit.py")
    assert_training_unchanged(trio)
    assert_same_tables(trio)
    run, trace = trio.callback_run, trio.trace
    assert set(run.table("layers").layer) == set(trace["names"])
    steps, loss = scalar(run, "loss")
    assert steps == list(range(10))
    np.testing.assert_allclose(loss, trace["loss"], rtol=1e-6)
    np.testing.assert_allclose(scalar(run, "grad_norm")[1], trace["grad_norm"], rtol=1e-5)
    # self.log in training_step: at the step it was logged in (gradlens step = global_step - 1)
    steps, values = user(run, "train_loss")
    assert steps == list(range(10))
    np.testing.assert_allclose(values, trace["loss"], rtol=1e-6)
    # self.log in validation_step, validation after global step 4 and 10: gradlens steps 3, 9
    steps, values = user(run, "val_loss")
    assert trace["val_step"] == [4, 10]
    assert steps == [3, 9]
    np.testing.assert_allclose(values, trace["val_loss"], rtol=1e-6)
    # on_epoch=True: the epoch's mean at its last step (6 batches a epoch; max_steps ends the 2nd)
    steps, values = user(run, "epoch_loss")
    assert steps == [5, 9]
    np.testing.assert_allclose(values, [np.mean(trace["loss"][:6]), np.mean(trace["loss"][6:])])
    # logged in the module's on_train_batch_end (after the callback's): still at its step
    steps, values = user(run, "seen")
    assert steps == list(range(10))
    assert values.tolist() == [float(t + 1) for t in range(10)]  # global_step = t + 1
    assert set(run.table("user").metric) == {"train_loss", "val_loss", "epoch_loss", "seen"}


def test_transformers_callback_records_what_watch_records(tmp_path):
    pytest.importorskip("transformers")
    trio = run_trio(tmp_path, "hf_train.py")
    assert_training_unchanged(trio, timing="runtime")
    assert_same_tables(trio)
    run, trace = trio.callback_run, trio.trace
    assert set(run.table("layers").layer) == set(trace["names"])
    steps, loss = scalar(run, "loss")
    assert steps == list(range(6))
    np.testing.assert_allclose(loss, trace["loss"], rtol=1e-6)
    np.testing.assert_allclose(scalar(run, "grad_norm")[1], trace["grad_norm"], rtol=1e-5)
    # each logs dict at global_step - 1: the Trainer's log_history lines up with the steps
    for key in ("loss", "grad_norm", "eval_loss"):
        steps, values = user(run, key)
        assert steps == [int(s) - 1 for s in trace[f"{key}_step"]], key
        np.testing.assert_allclose(values, trace[key], rtol=1e-6, err_msg=key)
    assert user(run, "eval_loss")[0] == [2, 5]
    assert user(run, "train_loss")[0] == [5]  # the summary at the end of train()
    assert {"learning_rate", "epoch", "train_runtime"} <= set(run.table("user").metric)


@pytest.mark.parametrize(
    ("script", "fail_at", "steps"), [("lightning_fit.py", 5, 5), ("hf_train.py", 3, 3)]
)
def test_a_failing_training_is_marked_failed(tmp_path, script, fail_at, steps):
    pytest.importorskip("lightning" if "lightning" in script else "transformers")
    result = subprocess.run(
        [sys.executable, str(HERE / script), "--callback", "--runs-dir", str(tmp_path),
         "--fail-at", str(fail_at)],
        capture_output=True, text=True, env=cli_env(), timeout=300,
    )  # fmt: skip
    assert result.returncode == 1
    assert "RuntimeError: the script fails" in result.stderr
    run = gradlens.open_run(tmp_path / "client")
    assert run.status == "failed"
    assert run.meta["error"] == "RuntimeError: the script fails"
    assert scalar(run, "loss")[0] == list(range(steps))


def test_lightning_callback_under_watch_only_forwards(tmp_path):
    pytest.importorskip("lightning")
    result = subprocess.run(
        [sys.executable, "-m", "gradlens", "watch", "--runs-dir", str(tmp_path), "--name",
         "watched", "--status", "off", str(HERE / "lightning_fit.py"), "--callback",
         "--runs-dir", str(tmp_path)],
        capture_output=True, text=True, env=cli_env(), timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "GradlensCallback only forwards the trainer's metrics" in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["watched"]  # one run, watch's
    run = gradlens.open_run(tmp_path / "watched")
    assert user(run, "train_loss")[0] == list(range(10))
    assert user(run, "val_loss")[0] == [3, 9]
