"""Run a client script plain and under ``gradlens watch``; compare what the script saw."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import gradlens
from tests.conftest import cli_env

CLIENTS = Path(__file__).parent


@dataclass
class Pair:
    plain: subprocess.CompletedProcess
    watched: subprocess.CompletedProcess
    trace: dict
    plain_weights: dict
    watched_weights: dict
    run: gradlens.Run


# The plain runs of this worker, by (script, args): a client is seeded, so its plain run is
# the same for every test that watches it with other gradlens options (run once, not each time).
_PLAIN: dict[tuple[str, ...], tuple[subprocess.CompletedProcess, Path]] = {}


def run_pair(
    tmp: Path, script: str, *args: str, watch: tuple[str, ...] = (), timeout: float = 600
) -> Pair:
    """The client plain and watched, concurrently (two cores), each with its own --out."""
    path = str(CLIENTS / script)
    env = cli_env()
    key = (script, *args)
    plain_cmd = [sys.executable, path, *args, "--out", str(tmp / "plain")]
    watched_cmd = [
        sys.executable, "-m", "gradlens", "watch", "--runs-dir", str(tmp / "runs"),
        "--name", "client", "--status", "off", *watch,
        path, *args, "--out", str(tmp / "watched"),
    ]  # fmt: skip
    commands = [watched_cmd] if key in _PLAIN else [watched_cmd, plain_cmd]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for cmd in commands
    ]
    done = []
    for proc, cmd in zip(procs, commands, strict=True):
        out, err = proc.communicate(timeout=timeout)
        done.append(subprocess.CompletedProcess(cmd, proc.returncode, out, err))
    if key not in _PLAIN:
        assert done[1].returncode == 0, done[1].stderr[-3000:]
        _PLAIN[key] = (done[1], tmp / "plain")
    plain, plain_out = _PLAIN[key]
    watched = done[0]
    assert watched.returncode == plain.returncode, watched.stderr[-3000:]
    trace = json.loads((tmp / "watched" / "trace.json").read_text())
    return Pair(
        plain,
        watched,
        trace,
        torch.load(plain_out / "weights.pt"),
        torch.load(tmp / "watched" / "weights.pt"),
        gradlens.open_run(tmp / "runs" / "client"),
    )


def assert_unchanged(pair: Pair, timing: str | None = None) -> None:
    """Same stdout (but lines with ``timing`` in them), bitwise-identical final weights, a
    finished run, no gradlens complaints."""

    def lines(text: str) -> list[str]:
        return [line for line in text.splitlines() if timing is None or timing not in line]

    assert lines(pair.watched.stdout) == lines(pair.plain.stdout)
    assert pair.plain_weights.keys() == pair.watched_weights.keys()
    for key, value in pair.plain_weights.items():
        assert torch.equal(value, pair.watched_weights[key]), key
    assert pair.run.status == "finished"
    assert "disabled" not in pair.watched.stderr, pair.watched.stderr[-2000:]


def scalar(run: gradlens.Run, metric: str) -> tuple[list[int], np.ndarray]:
    df = run.table("scalars", filters=[("metric", "==", metric)]).sort_values("step")
    df = df[df["index"] == 0]
    return df.step.tolist(), df.value.to_numpy()


def assert_steps(pair: Pair, metric: str = "loss", rtol: float = 1e-5) -> None:
    """One row per optimizer step, with the values the script computed itself."""
    expected = np.asarray(pair.trace[metric])
    steps, values = scalar(pair.run, metric)
    assert steps == list(range(len(expected))), (metric, steps)
    np.testing.assert_allclose(values, expected, rtol=rtol, err_msg=metric)


def layer_names(run: gradlens.Run) -> set[str]:
    return set(run.table("layers", columns=["layer"]).layer.unique())
