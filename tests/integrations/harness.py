"""Run a framework script three ways — plain, under ``gradlens watch``, with the
``GradlensCallback`` — and compare the two runs and the three trainings."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import gradlens
from tests.conftest import cli_env

HERE = Path(__file__).parent
TIMING = {"time", "step_time", "samples_per_s", "tokens_per_s"}  # wall-clock: differ per run
TABLES = ("scalars", "layers", "softmax", "events")


@dataclass
class Trio:
    plain: subprocess.CompletedProcess
    watched: subprocess.CompletedProcess
    callback: subprocess.CompletedProcess
    trace: dict  # what the script saw in the callback run
    watch_run: gradlens.Run
    callback_run: gradlens.Run
    out: Path

    def weights(self, which: str) -> dict:
        return torch.load(self.out / which / "weights.pt")


def run_trio(tmp: Path, script: str, *args: str, timeout: float = 300) -> Trio:
    """The script plain, watched and with ``--callback``, concurrently."""
    path = str(HERE / script)
    commands = {
        "plain": [sys.executable, path, *args],
        "watched": [
            sys.executable, "-m", "gradlens", "watch", "--runs-dir", str(tmp / "watch"),
            "--name", "client", "--status", "off", path, *args,
        ],
        "callback": [sys.executable, path, *args, "--callback", "--runs-dir", str(tmp / "cb")],
    }  # fmt: skip
    procs = {
        key: subprocess.Popen(
            [*cmd, "--out", str(tmp / key)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(),
        )
        for key, cmd in commands.items()
    }
    done = {}
    for key, proc in procs.items():
        out, err = proc.communicate(timeout=timeout)
        done[key] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    for key, result in done.items():
        assert result.returncode == 0, (key, result.stderr[-3000:])
        assert "gradlens:" not in result.stderr, (key, result.stderr[-3000:])
    return Trio(
        done["plain"],
        done["watched"],
        done["callback"],
        json.loads((tmp / "callback" / "trace.json").read_text()),
        gradlens.open_run(tmp / "watch" / "client"),
        gradlens.open_run(tmp / "cb" / "client"),
        tmp,
    )


def assert_training_unchanged(trio: Trio, timing: str | None = None) -> None:
    """Same output and bitwise-identical final weights, plain, watched and with the callback."""

    def lines(text: str) -> list[str]:
        return [line for line in text.splitlines() if timing is None or timing not in line]

    assert lines(trio.callback.stdout) == lines(trio.plain.stdout)
    assert lines(trio.watched.stdout) == lines(trio.plain.stdout)
    plain = trio.weights("plain")
    for other in ("callback", "watched"):
        weights = trio.weights(other)
        assert weights.keys() == plain.keys()
        for key, value in plain.items():
            assert torch.equal(value, weights[key]), (other, key)


def assert_same_tables(trio: Trio) -> None:
    """The callback's run holds the rows watch's run holds (timings aside), plus ``user``."""
    a, b = trio.callback_run, trio.watch_run
    assert a.status == b.status == "finished"
    assert a.meta["steps"] == b.meta["steps"]
    assert a.meta["config"] == b.meta["config"]
    for key in ("layers", "optimizers", "hyperparameters", "disabled", "unavailable"):
        assert a.meta[key] == b.meta[key], key
    for table in TABLES:
        left, right = _rows(a, table), _rows(b, table)
        assert list(left.columns) == list(right.columns), table
        keys = [c for c in left.columns if c != "value"]
        pd.testing.assert_frame_equal(left[keys], right[keys], obj=table)
        if "value" in left:
            np.testing.assert_allclose(left.value, right.value, rtol=1e-6, err_msg=table)


def _rows(run: gradlens.Run, table: str) -> pd.DataFrame:
    df = run.table(table)
    if "metric" in df:
        df = df[~df.metric.isin(TIMING)]
    return df.sort_values(list(df.columns)).reset_index(drop=True)


def scalar(run: gradlens.Run, metric: str) -> tuple[list[int], np.ndarray]:
    df = run.table("scalars", filters=[("metric", "==", metric)])
    df = df[df["index"] == 0].sort_values("step")
    return df.step.tolist(), df.value.to_numpy()


def user(run: gradlens.Run, metric: str) -> tuple[list[int], np.ndarray]:
    df = run.table("user")
    df = df[df.metric == metric].sort_values("step", kind="stable")
    return df.step.tolist(), df.value.to_numpy()
