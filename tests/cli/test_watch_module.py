"""``gradlens watch -m MODULE`` and ``gradlens watch FOLDER``: what ``python -m pkg.train`` and
``python app/`` run, set up as python sets them up (``sys.path[0]``, ``sys.argv``,
``__spec__`` for spawn-started DataLoader workers), with every argument after MODULE the
module's own."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("torch")  # the floors job runs the CLI tests without torch

import gradlens
from gradlens.cli.main import _module_args
from tests.conftest import cli_env, gradlens_cli

TRAIN = """\
import sys
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pkg import data  # an absolute import: the project folder (cwd) is on sys.path


def main():
    print("args", sys.argv[1:], "spec", __spec__.name)
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(data.dataset(), batch_size=8, num_workers=1,
                        multiprocessing_context="spawn")  # re-imports pkg.train by name
    for x, y in loader:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        print(f"loss {loss.item():.6f}")


if __name__ == "__main__":
    main()
"""
DATA = """\
import torch
from torch.utils.data import TensorDataset


def dataset():
    g = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(32, 3, generator=g), torch.randint(0, 2, (32,), generator=g))
"""


@pytest.fixture
def project(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    # a package's __init__ runs in the run, seeing python's sys.argv (['-m', ARGS…])
    (pkg / "__init__.py").write_text('import sys\n\nprint("package argv", sys.argv)\n')
    (pkg / "train.py").write_text(TRAIN)
    (pkg / "data.py").write_text(DATA)
    (pkg / "__main__.py").write_text("from pkg.train import main\n\nmain()\n")
    return tmp_path


def test_watch_m_runs_a_module_as_python_m_does(project):
    args = ["--name", "not-watchs", "--lr=1"]  # after MODULE: the module's, not watch's
    plain = subprocess.run(
        [sys.executable, "-m", "pkg.train", *args],
        cwd=project, capture_output=True, text=True, env=cli_env(),
    )  # fmt: skip
    watched = gradlens_cli(
        "watch", "--runs-dir", "runs", "--status", "off", "--no-updates", "--probe",
        "hessian.every=100", "--probe", "hessian.k=2", "-m", "pkg.train", *args, cwd=project,
    )  # fmt: skip
    assert plain.returncode == 0, plain.stderr[-2000:]
    assert watched.returncode == 0, watched.stderr[-2000:]
    assert watched.stdout == plain.stdout
    assert "args ['--name', 'not-watchs', '--lr=1'] spec pkg.train" in watched.stdout
    run = gradlens.open_run(project / "runs" / "train")
    assert run.steps == 4 and run.status == "finished"
    assert [p.name for p in (project / "runs").iterdir()] == ["train"]  # no run per worker
    assert run.meta["command"] == (
        "gradlens watch --runs-dir runs --status off --no-updates --probe hessian.every=100 "
        "--probe hessian.k=2 -m pkg.train --name not-watchs --lr=1"
    )
    loss = run.table("scalars", filters=[("metric", "==", "loss")]).value
    lines = plain.stdout.splitlines()
    assert lines[0] == "package argv ['-m', '--name', 'not-watchs', '--lr=1']"
    printed = [float(line.split()[1]) for line in lines if line.startswith("loss ")]
    assert list(loss.round(6)) == printed


def test_watch_a_package_or_a_folder_runs_its_main(project):
    by_module = gradlens_cli("watch", "--runs-dir", "runs", "--status", "off", "-m", "pkg",
                             cwd=project)  # fmt: skip
    by_folder = gradlens_cli("watch", "--runs-dir", "runs", "--status", "off", "pkg/",
                             cwd=project)  # fmt: skip
    for result in (by_module, by_folder):
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.count("loss ") == 4
    assert sorted(p.name for p in (project / "runs").iterdir()) == ["pkg", "pkg-2"]


def test_a_package_that_fails_to_import_fails_as_under_python(project):
    broken = project / "broken"
    broken.mkdir()
    (broken / "__init__.py").write_text("raise RuntimeError('init failed')\n")
    (broken / "train.py").write_text("")
    result = gradlens_cli("watch", "--runs-dir", "runs", "--status", "off", "-m", "broken.train",
                          cwd=project)  # fmt: skip
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert str(broken / "__init__.py") in lines[1]  # no gradlens, runpy or importlib frames
    assert lines[-1] == "RuntimeError: init failed"
    assert gradlens.open_run(project / "runs" / "train").status == "failed"


def test_a_module_that_is_not_there_is_one_line(project):
    result = gradlens_cli("watch", "--runs-dir", "runs", "-m", "pkg.nope", cwd=project)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"gradlens: error: no module named 'pkg.nope' (from {project})"
    ]
    assert not (project / "runs").exists()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["watch", "-m", "pkg.train", "--name", "x"],
         ["watch", "-m", "pkg.train", "--", "--name", "x"]),
        (["watch", "--name", "r", "--every", "5", "-m", "t", "-v"],
         ["watch", "--name", "r", "--every", "5", "-m", "t", "--", "-v"]),
        (["watch", "-mpkg.t", "a"], ["watch", "-mpkg.t", "--", "a"]),
        (["watch", "--module=t", "--x"], ["watch", "--module=t", "--", "--x"]),
        (["watch", "--no-updates", "train.py", "-m", "x"],
         ["watch", "--no-updates", "train.py", "-m", "x"]),
        (["watch", "--name", "-m", "train.py"], ["watch", "--name", "-m", "train.py"]),
        (["report", "-m"], ["report", "-m"]),
    ],
)  # fmt: skip
def test_everything_after_the_module_is_the_modules(argv, expected):
    assert _module_args(argv) == expected


def test_a_script_that_trains_nothing_leaves_no_run(tmp_path):
    """``train.py --help`` ends well having seen no model, loss or optimizer: no run is left
    (a run of zero steps whose report says nothing was trained is noise in ``ls``)."""
    (tmp_path / "train.py").write_text(
        "import argparse\nimport torch\n\n"
        "parser = argparse.ArgumentParser(description='trains a model')\n"
        "parser.add_argument('--lr', type=float, default=0.1)\n"
        "args = parser.parse_args()\n"
    )
    result = gradlens_cli("watch", "--runs-dir", "runs", "--status", "plain", "train.py",
                          "--help", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0 and "trains a model" in result.stdout
    assert "gradlens: no run kept: 'train' ended before anything was recorded" in result.stderr
    assert "gradlens report" not in result.stderr
    assert list((tmp_path / "runs").iterdir()) == []
    failing = gradlens_cli("watch", "--runs-dir", "runs", "--status", "off", "train.py",
                           "--lr", "x", cwd=tmp_path)  # fmt: skip
    assert failing.returncode == 2  # a usage error is a failed run: kept, with its error
    assert gradlens.open_run(tmp_path / "runs" / "train").status == "failed"
