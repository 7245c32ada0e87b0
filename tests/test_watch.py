"""`gradlens watch` on real training scripts, through the real CLI in a subprocess."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import gradlens
from tests.conftest import EXAMPLES, SCRIPTS, cli_env, gradlens_cli

pytestmark = pytest.mark.slow


def _watch(runs_dir, script, *args, name=None, every=10, options=()):
    opts = ["--runs-dir", str(runs_dir), "--status", "off", "--every", str(every), *options]
    if name:
        opts += ["--name", name]
    return gradlens_cli("watch", *opts, str(script), *args)


def test_manual_sgd_gets_per_layer_rows(runs_dir):
    result = _watch(runs_dir, SCRIPTS / "manual_sgd.py")
    assert result.returncode == 0, result.stderr
    run = gradlens.open_run(runs_dir / "manual_sgd")
    assert run.status == "finished" and run.steps == 25
    layers = run.table("layers")
    assert set(layers.layer) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    grad = layers[layers.metric == "grad_norm"]
    assert len(grad) == 25 * 4 and (grad.value > 0).all()
    update = layers[layers.metric == "update_norm"]
    assert sorted(update.step.unique()) == list(range(25))
    assert (update.value > 0).all()


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_model(runs_dir, backend):
    result = _watch(runs_dir, SCRIPTS / "compiled.py", backend, "15", name=backend)
    assert result.returncode == 0, result.stderr
    assert "global hooks" not in result.stderr  # our discovery hook's warning is ours to hide
    run = gradlens.open_run(runs_dir / backend)
    assert run.steps == 15
    assert set(run.table("layers").layer) == {"0.weight", "0.bias", "2.weight", "2.bias"}


@pytest.fixture(scope="module")
def invariance_reference(tmp_path_factory) -> Path:
    """The weights ``invariance.py`` ends with, run plain (once for both tests)."""
    plain = tmp_path_factory.mktemp("invariance") / "plain.pt"
    ref = subprocess.run(
        [sys.executable, str(SCRIPTS / "invariance.py"), str(plain)],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=300,
    )
    assert ref.returncode == 0, ref.stderr
    return plain


@pytest.mark.parametrize("updates_from", ["copy", "optimizer"])
def test_watch_does_not_change_training(tmp_path, runs_dir, updates_from, invariance_reference):
    """Bitwise-identical parameters and buffers with and without gradlens (spawn workers,
    dropout, BatchNorm, AdamW, accumulation, a scheduler), whichever way ‖Δθ‖ is read."""
    plain, watched = invariance_reference, tmp_path / "watched.pt"
    script = SCRIPTS / "invariance.py"
    options = ("--updates-from", updates_from, "--param-every", "3")
    result = _watch(runs_dir, script, str(watched), every=3, options=options)
    assert result.returncode == 0, result.stderr
    a, b = torch.load(plain), torch.load(watched)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    run = gradlens.open_run(runs_dir / "invariance")
    assert run.steps == 16  # 2 epochs × 16 batches / 2 accumulation steps
    samples = run.table("scalars", filters=[("metric", "==", "samples_per_s")])
    assert len(samples) > 0
    assert run.meta["config"]["updates_from"] == updates_from
    updates = run.table("layers", filters=[("metric", "==", "update_norm")])
    assert sorted(set(updates.step)) == list(range(0, 16, 3))
    assert (updates.value > 0).all()


def test_script_exception_exits_1_marks_failed_and_keeps_rows(runs_dir):
    result = _watch(runs_dir, SCRIPTS / "crash.py", every=4)
    assert result.returncode == 1
    assert "ValueError: bad batch at step 8" in result.stderr
    assert 'crash.py", line' in result.stderr and "runpy" not in result.stderr
    run = gradlens.open_run(runs_dir / "crash")
    assert run.status == "failed" and run.meta["exit_code"] == 1
    assert "bad batch" in run.meta["error"]
    assert run.steps == 9
    assert sorted(run.table("scalars").step.unique()) == list(range(9))


@pytest.mark.parametrize("code,status", [(0, "finished"), (3, "failed")])
def test_exit_code_and_argv_pass_through(runs_dir, code, status):
    result = _watch(runs_dir, SCRIPTS / "exit_code.py", str(code), "--flag", name=f"e{code}")
    assert result.returncode == code
    assert f"argv: ['{code}', '--flag']" in result.stdout
    run = gradlens.open_run(runs_dir / f"e{code}")
    assert run.status == status and run.steps == 3


def test_sigkill_keeps_every_flushed_row(runs_dir):
    cmd = [
        sys.executable,
        "-m",
        "gradlens",
        "watch",
        "--runs-dir",
        str(runs_dir),
        "--status",
        "off",
        "--every",
        "5",
        str(SCRIPTS / "slow.py"),
        "0.005",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=cli_env())
    assert proc.stdout is not None
    started = None
    for line in proc.stdout:
        if line.strip() == "step 0":
            started = time.monotonic()
        if line.strip() == "step 400":
            break
    assert started is not None
    rate = 400 / (time.monotonic() - started)  # steps per second
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run = gradlens.open_run(runs_dir / "slow")
    assert run.status == "crashed"
    # what meta.json learns at the first step, there though the run never closed
    assert run.meta["device"] == "cpu" and run.meta["layers"] == 4
    assert run.meta["optimizers"][0]["optimizer"] == "SGD"
    assert run.meta["hyperparameters"]["lr"] > 0
    scalars = run.table("scalars")
    steps = sorted(scalars.step.unique())
    assert steps == list(range(len(steps)))
    # Lost: at most the unflushed steps (--every 5) plus the writer's 1 s batching, with slack.
    assert 400 - len(steps) <= 5 + 1.5 * rate, (len(steps), rate)
    layers = run.table("layers")
    per_step = layers[layers.metric == "grad_norm"].groupby("step").size()
    assert (per_step == 4).all() and len(per_step) == len(steps)  # complete: 4 tensors a step
    losses = scalars[scalars.metric == "loss"]
    assert len(losses) == len(steps)


def test_sigterm_mid_training_flushes_and_marks_interrupted(runs_dir):
    cmd = [sys.executable, "-m", "gradlens", "watch", "--runs-dir", str(runs_dir)]
    cmd += ["--status", "off", "--every", "50", str(SCRIPTS / "slow.py"), "0.005"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=cli_env())
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip() == "step 120":
            break
    proc.send_signal(signal.SIGTERM)
    proc.stdout.read()
    assert proc.wait() == 143
    run = gradlens.open_run(runs_dir / "slow")
    assert run.status == "interrupted"
    steps = sorted(run.table("scalars").step.unique())
    assert len(steps) > 120 and steps == list(range(len(steps)))  # the buffered rows too


def test_sigterm_during_close_lets_the_flush_finish(runs_dir):
    result = _watch(runs_dir, SCRIPTS / "term_during_close.py", every=50)
    assert result.returncode == 143, result.stderr
    assert "Traceback" not in result.stderr
    run = gradlens.open_run(runs_dir / "term_during_close")
    # The flush finished, and meta tells how the process ended (not finished / 0).
    assert run.status == "interrupted" and run.meta["exit_code"] == 143
    assert run.meta["error"] == "SIGTERM" and run.steps == 30
    assert sorted(run.table("scalars").step.unique()) == list(range(30))


def test_missing_script_and_bad_option_are_one_line_exit_2(runs_dir):
    missing = gradlens_cli("watch", "--runs-dir", str(runs_dir), "no_such_script.py")
    assert missing.returncode == 2
    assert missing.stderr.strip() == "gradlens: error: no such script: no_such_script.py"
    bad = gradlens_cli("watch", "--bogus", str(SCRIPTS / "crash.py"))
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1 and "--bogus" in bad.stderr
    bad_every = gradlens_cli("watch", "--every", "0", str(SCRIPTS / "crash.py"))
    assert bad_every.returncode == 2 and len(bad_every.stderr.strip().splitlines()) == 1
    assert not list(runs_dir.iterdir())


def test_learning_rate_spike_gives_events_at_the_right_steps(runs_dir):
    spiky = _watch(runs_dir, EXAMPLES / "mlp_classifier.py", "--spike-at", "150", name="spiky")
    healthy = _watch(runs_dir, EXAMPLES / "mlp_classifier.py", name="healthy")
    assert spiky.returncode == 0 and healthy.returncode == 0, spiky.stderr + healthy.stderr
    events = gradlens.open_run(runs_dir / "spiky").table("events")
    assert events.step.min() == 151  # the update at step 150 shows in step 151's loss/grads
    first = events[events.step == 151]
    assert {"loss_spike", "grad_spike", "layer_grad_spike"} <= set(first.kind)
    assert events.step.max() <= 160
    assert gradlens.open_run(runs_dir / "healthy").table("events").empty


def test_ls_lists_runs(runs_dir):
    _watch(runs_dir, SCRIPTS / "exit_code.py", "0", name="one")
    _watch(runs_dir, SCRIPTS / "crash.py", name="two")
    result = gradlens_cli("ls", str(runs_dir))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    rows = {line.split()[0]: line.split() for line in lines if line.split()}
    assert rows["one"][1:3] == ["finished", "3"]
    assert rows["two"][1:3] == ["failed", "9"]
    assert gradlens_cli("ls", str(runs_dir / "nope")).returncode == 2


def test_script_file_is_absolute_as_under_python(tmp_path, runs_dir):
    """A Hydra-style script changes directory, then reads a file beside ``__file__``: the
    script named by a relative path must see the absolute ``__file__`` python gives it."""
    project = tmp_path / "proj"
    project.mkdir()
    (project / "config.txt").write_text("lr=0.1\n")
    (project / "chdir_train.py").write_text(
        "import os, sys, torch\n"
        "os.chdir('/')\n"
        "here = os.path.dirname(__file__)\n"
        "print(os.path.isabs(__file__), open(os.path.join(here, 'config.txt')).read().strip())\n"
        "m = torch.nn.Linear(2, 1); opt = torch.optim.SGD(m.parameters(), lr=0.1)\n"
        "m(torch.ones(3, 2)).sum().backward(); opt.step()\n"
    )
    plain = subprocess.run(
        [sys.executable, "proj/chdir_train.py"], cwd=tmp_path, capture_output=True, text=True
    )
    opts = ["--runs-dir", str(runs_dir), "--status", "off", "--name", "chdir"]
    watched = gradlens_cli("watch", *opts, "proj/chdir_train.py", cwd=tmp_path)
    assert plain.returncode == 0 and plain.stdout == "True lr=0.1\n"
    assert watched.returncode == 0, watched.stderr[-2000:]
    assert watched.stdout == plain.stdout
    assert gradlens.open_run(runs_dir / "chdir").steps == 1
