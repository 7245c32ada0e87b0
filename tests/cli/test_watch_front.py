"""What ``gradlens watch`` says around the script: a run folder given as ``--runs-dir`` is one
line, a script that does not compile shows Python's message and no gradlens frames, and the
commands printed at the end work from where ``watch`` was typed, even after the script
changed directory."""

from __future__ import annotations

import shlex
import subprocess
import sys

import pytest

pytest.importorskip("torch")  # the floors job runs the CLI tests without torch

import gradlens
from tests.conftest import cli_env, gradlens_cli

pytestmark = pytest.mark.slow

TRAIN = (
    "import torch\n"
    "m = torch.nn.Linear(2, 1); opt = torch.optim.SGD(m.parameters(), lr=0.1)\n"
    "for _ in range(3):\n"
    "    opt.zero_grad(); m(torch.ones(3, 2)).sum().backward(); opt.step()\n"
)


def test_the_suggested_commands_work_after_the_script_changed_directory(tmp_path):
    (tmp_path / "train.py").write_text("import os\nos.chdir('/')\n" + TRAIN)
    result = gradlens_cli("watch", "--runs-dir", "runs", "--name", "cd", "train.py", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if "gradlens report" in line]
    (line,) = lines
    command = shlex.split(line.split("look at it:", 1)[1])
    assert command == ["gradlens", "report", "runs/cd"]
    pasted = subprocess.run(
        [sys.executable, "-m", "gradlens", *command[1:]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=cli_env(),
    )
    assert pasted.returncode == 0, pasted.stderr


def test_a_run_folder_as_runs_dir_is_one_line(tmp_path):
    (tmp_path / "train.py").write_text(TRAIN)
    first = gradlens_cli("watch", "--runs-dir", "runs", "--name", "a", "train.py", cwd=tmp_path)
    assert first.returncode == 0
    again = gradlens_cli("watch", "--runs-dir", "runs/a", "train.py", cwd=tmp_path)
    assert again.returncode == 2
    (line,) = again.stderr.strip().splitlines()
    assert line.startswith("gradlens: error: ") and "is a run, not a folder of runs" in line
    assert not [p for p in (tmp_path / "runs" / "a").iterdir() if (p / "meta.json").is_file()]
    assert gradlens.open_run(tmp_path / "runs" / "a").steps == 3


def test_a_script_that_does_not_compile_shows_pythons_message_only(tmp_path):
    (tmp_path / "broken.py").write_text("import torch\ndef f(:\n    pass\n")
    plain = subprocess.run(
        [sys.executable, "broken.py"], cwd=tmp_path, capture_output=True, text=True
    )
    watched = gradlens_cli("watch", "--runs-dir", "runs", "--status", "off", "broken.py",
                           cwd=tmp_path)  # fmt: skip
    assert watched.returncode == plain.returncode == 1
    assert "SyntaxError" in watched.stderr
    assert "gradlens/watch.py" not in watched.stderr and "runpy" not in watched.stderr
    assert watched.stderr.strip().splitlines()[-1] == plain.stderr.strip().splitlines()[-1]
