"""How `gradlens watch` ends when the script moves, the user presses Ctrl-C while gradlens closes,
the disk fails, or the process is killed: through the real CLI in a subprocess."""

from __future__ import annotations

import random
import resource
import signal
import subprocess
import sys

import pytest

import gradlens
from gradlens.instrument.signals import ABANDON_MESSAGE
from tests.conftest import SCRIPTS, cli_env, gradlens_cli

pytestmark = pytest.mark.slow


def _opts(runs_dir, every=10, name=None):
    opts = ["watch", "--runs-dir", str(runs_dir), "--status", "off", "--every", str(every)]
    return opts + (["--name", name] if name else [])


def _leftovers(run_dir):
    """Temporary files and journals left in a run folder."""
    return sorted(
        str(p.relative_to(run_dir))
        for p in run_dir.rglob("*")
        if p.name.startswith(".") or p.suffix == ".arrows"
    )


def _gradlens_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("gradlens:")]


def test_script_that_chdirs_keeps_its_run_whole(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = gradlens_cli(
        *_opts("runs", every=7), str(SCRIPTS / "chdir_midway.py"), str(elsewhere), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert f"done in {elsewhere}" in result.stdout
    run = gradlens.open_run(tmp_path / "runs" / "chdir_midway")
    assert run.status == "finished" and run.meta["exit_code"] == 0 and run.steps == 200
    assert sorted(run.table("scalars").step.unique()) == list(range(200))
    assert not list(elsewhere.iterdir())  # no orphan rows in the new folder
    assert _leftovers(run.path) == []


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_while_closing_waits_for_the_rows_and_meta(runs_dir, presses):
    script = SCRIPTS / "interrupt_during_close.py"
    result = gradlens_cli(*_opts(runs_dir, every=50), str(script), str(presses))
    assert result.returncode == 130, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.count(ABANDON_MESSAGE) == (1 if presses == 2 else 0), result.stderr
    run = gradlens.open_run(runs_dir / "interrupt_during_close")
    assert run.status == "interrupted" and run.meta["exit_code"] == 130
    assert run.meta["error"] == "KeyboardInterrupt" and run.steps == 30
    assert sorted(run.table("scalars").step.unique()) == list(range(30))
    assert _leftovers(run.path) == []


def test_third_ctrl_c_abandons_the_close(runs_dir):
    script = SCRIPTS / "interrupt_during_close.py"
    result = gradlens_cli(*_opts(runs_dir, every=50), str(script), "3")
    assert result.returncode == 130, result.stderr
    assert result.stderr.count(ABANDON_MESSAGE) == 1 and "abandoned" in result.stderr
    assert "Traceback" not in result.stderr
    run = gradlens.open_run(runs_dir / "interrupt_during_close")
    assert run.status == "crashed"  # never finalized; what was written still reads
    steps = sorted(run.table("scalars").step.unique())
    assert steps == list(range(len(steps)))


def _file_size_limit(limit):
    def apply():  # Python ignores SIGXFSZ: a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_full_disk_keeps_the_exit_code_and_warns_once(runs_dir):
    cmd = [sys.executable, "-m", "gradlens", *_opts(runs_dir, every=10)]
    cmd += [str(SCRIPTS / "storage_fails.py"), "segments"]
    result = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=300,
        preexec_fn=_file_size_limit(24_000),  # no file may grow past 24 kB: a "full disk"
    )
    assert result.returncode == 0, result.stderr
    assert "training done" in result.stdout
    lines = _gradlens_lines(result.stderr)
    assert len(lines) == 1 and "storage error" in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    run = gradlens.open_run(runs_dir / "storage_fails")
    assert run.status == "finished" and run.meta["exit_code"] == 0
    assert "File too large" in run.meta["storage_error"]
    assert not [p for p in run.path.rglob(".*")]  # no temporary file left behind
    steps = run.table("scalars").step.unique()
    assert 0 < len(steps) <= 40  # what could be written reads back


def test_unwritable_meta_at_close_keeps_the_exit_code(runs_dir):
    run_dir = runs_dir / "storage_fails"
    result = gradlens_cli(*_opts(runs_dir), str(SCRIPTS / "storage_fails.py"), "meta", str(run_dir))
    assert result.returncode == 0, result.stderr
    lines = _gradlens_lines(result.stderr)
    assert len(lines) == 1 and "meta.json" in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not [p for p in run_dir.rglob(".*")]
    (run_dir / "meta.json").rmdir()
    (run_dir / "meta.json.copy").rename(run_dir / "meta.json")
    run = gradlens.open_run(run_dir)  # the rows are all there
    assert sorted(run.table("scalars").step.unique()) == list(range(40))


def test_sigkill_at_random_moments_loses_at_most_every_steps(runs_dir):
    """Rows reach the journal at every flush: a SIGKILL loses only unflushed steps."""
    every, rng, lost = 5, random.Random(17), []
    for attempt in range(2):
        target = rng.randrange(30, 150)
        cmd = [sys.executable, "-m", "gradlens", *_opts(runs_dir, every, name=f"k{attempt}")]
        cmd += [str(SCRIPTS / "slow.py"), "0.005"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=cli_env())
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip() == f"step {target}":
                break
        proc.send_signal(signal.SIGKILL)
        printed = [target, *(int(s.split()[1]) for s in proc.stdout.read().split("\n") if s)]
        proc.wait()
        run = gradlens.open_run(runs_dir / f"k{attempt}")
        assert run.status == "crashed"
        steps = sorted(run.table("scalars").step.unique())
        assert steps == list(range(len(steps)))
        layers = run.table("layers")
        grads = layers[layers.metric == "grad_norm"].groupby("step").size()
        assert (grads == 4).all() and len(grads) == len(steps)  # whole steps only
        lost.append(max(printed) + 1 - len(steps))
        assert len(list(run.path.rglob("*"))) <= 12  # meta, 3 table folders and their files
    # every - 1 steps wait in the capture buffer, a few more may be in the writer's hands
    # (20 kills measured: at most 4 at --every 5; before journals: up to 1 s of steps, ~130).
    assert max(lost) <= 2 * every, lost
