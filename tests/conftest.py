"""Shared fixtures: fresh run folders, and the real CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).parent / "scripts"
EXAMPLES = ROOT / "examples"

# Errors inside gradlens's hooks and writer must fail the tests, not be reported and skipped.
os.environ["GRADLENS_STRICT"] = "1"


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    path = tmp_path / "runs"
    path.mkdir()
    return path


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("GITHUB_STEP_SUMMARY", None)
    # one thread per script: the suite runs two workers, each a plain and a watched script,
    # on two cores (OpenMP's spinning threads cost ~10% more CPU than they gain)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update({"GRADLENS_STRICT": "1", "COLUMNS": "120", "NO_COLOR": "1"}, **extra)
    return env


def gradlens_cli(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """Run ``python -m gradlens ARGS`` for real and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "gradlens", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=kwargs.pop("env", cli_env()),
        **kwargs,
    )
