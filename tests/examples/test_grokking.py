"""examples/grokking.py: runs as a script, and a short, small run reaches softmax collapse
(checked with gradlens's own function on the training logits), which weight decay avoids."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from types import ModuleType

import pytest
import torch

from gradlens.functional.softmax import softmax_collapse
from tests.conftest import EXAMPLES

# A small modulus and a large learning rate: the same dynamics as the default run, compressed
# into a few hundred cheap steps (the default run collapses around step 1600–1800).
SHORT = {"p": 23, "train_fraction": 0.5, "hidden": 64, "lr": 0.1, "log_every": 50}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny full-batch steps: threads only add contention on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("grokking", EXAMPLES / "grokking.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_short_run_reaches_softmax_collapse() -> None:
    grokking = _example()
    result = grokking.train(steps=300, verbose=False, **SHORT)
    x_train, y_train, _, _ = result.data
    with torch.no_grad():
        logits = result.model(x_train)
    stats = softmax_collapse(logits, y_train)
    assert stats["accuracy"] == 1.0
    assert stats["saturated_fraction"] > 0.2  # collapse has started
    assert stats["zero_loss_fraction"] > 0.1
    assert stats["max_logit_gap"] > 16.6  # beyond the float32 saturation gap
    # the example's own column is Prieto et al.'s formula: the same number as gradlens's
    assert grokking.saturated_fraction(logits) == stats["saturated_fraction"]
    history = result.history
    assert history[0]["sc"] == 0.0 and history[-1]["sc"] > 0.2
    assert history[-1]["test_acc"] < 0.1  # memorised, not generalised


def test_weight_decay_keeps_the_softmax_unsaturated() -> None:
    grokking = _example()
    result = grokking.train(steps=300, weight_decay=1.0, verbose=False, **SHORT)
    x_train, y_train, _, _ = result.data
    with torch.no_grad():
        stats = softmax_collapse(result.model(x_train), y_train)
    assert stats["saturated_fraction"] == 0.0


def test_runs_as_a_script() -> None:
    args = [
        "--steps",
        "21",
        "--p",
        "13",
        "--hidden",
        "16",
        "--log-every",
        "10",
        "--weight-decay",
        "1",
    ]
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "grokking.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith("step")]
    assert len(lines) == 3 and "softmax collapse" in lines[-1]
