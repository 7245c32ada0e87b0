"""The CLI in-process: ``gradlens.cli.main.main(argv)`` with its output captured."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT

SAMPLES = ROOT / "sample_runs"


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        return self.stderr.strip().splitlines()


@pytest.fixture
def cli(capsys, monkeypatch):
    """``cli("report", "mlp")`` → Result; 80 columns, no colour, no step summary."""
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    monkeypatch.delenv("GRADLENS_DIR", raising=False)

    def invoke(*args: str) -> Result:
        from gradlens.cli.main import main

        capsys.readouterr()
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return Result(code, out.out, out.err)

    return invoke


@pytest.fixture
def samples(tmp_path) -> Path:
    """A private copy of the sample runs that a test may damage."""
    folder = tmp_path / "samples"
    folder.mkdir()
    for name in ("mlp", "mlp-spiky", "mlp-diverged"):
        shutil.copytree(SAMPLES / name, folder / name)
    return folder
