"""``watch`` ends with the run's numbers (as ``report`` defines them) and the next commands."""

from __future__ import annotations

import json
import shlex

import pytest

from gradlens.report import summarize
from gradlens.report.format import loss_value
from gradlens.store import open_run
from tests.conftest import gradlens_cli

pytest.importorskip("torch")  # absent in the floors check (.ci/floors)

SCRIPT = """
import torch
from torch import nn

torch.manual_seed(0)
model = nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.05)
x, y = torch.randn(64, 4), torch.randn(64, 1)
for _ in range(40):
    opt.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()
"""


def test_watch_ends_with_the_numbers_and_the_next_commands(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    result = gradlens_cli(
        "watch",
        "--runs-dir",
        "runs",
        "--status",
        "plain",
        "--name",
        "tiny",
        "train.py",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    run = open_run(tmp_path / "runs" / "tiny")
    summary = summarize(run, findings=False)
    lines = result.stderr.strip().splitlines()
    assert lines[-3] == (
        f"gradlens: tiny: final loss {loss_value(summary.final_loss)} (mean of last 5% of "
        "steps); steps with a spike: 0 loss, 0 gradient; non-finite steps: 0"
    )
    assert lines[-2] == "gradlens: look at it:  gradlens report runs/tiny"
    assert lines[-1].split() == ["gradlens", "dashboard", "runs"]
    # the printed command works, and report prints the same final loss
    report = gradlens_cli(
        *shlex.split(lines[-2].split(":  ", 1)[1])[1:], "-f", "json", cwd=tmp_path
    )
    assert report.returncode == 0, report.stderr
    assert loss_value(json.loads(report.stdout)["run"]["final_loss"]) == loss_value(
        summary.final_loss
    )
    quiet = gradlens_cli("watch", "--runs-dir", "runs", "--status", "off", "train.py", cwd=tmp_path)
    assert quiet.returncode == 0 and "look at it" not in quiet.stderr
