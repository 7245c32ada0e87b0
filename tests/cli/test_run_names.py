"""A run argument is a path or a name in --runs-dir / $GRADLENS_DIR / ./runs."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.cli.conftest import SAMPLES
from tests.conftest import cli_env, gradlens_cli


def test_report_and_compare_take_names_in_runs_dir(cli):
    result = cli("report", "mlp", "--runs-dir", SAMPLES, "-f", "json")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["run"]["name"] == "mlp"
    result = cli("compare", "mlp", "mlp-spiky", "--runs-dir", SAMPLES, "-f", "json")
    assert result.code == 0, result.stderr
    assert [r["run"] for r in json.loads(result.stdout)["runs"]] == ["mlp", "mlp-spiky"]


def test_names_resolve_in_gradlens_dir_and_in_dot_runs(cli, monkeypatch, tmp_path):
    monkeypatch.setenv("GRADLENS_DIR", str(SAMPLES))
    assert cli("compare", "mlp", "mlp-spiky").code == 0
    monkeypatch.delenv("GRADLENS_DIR")
    (tmp_path / "runs").symlink_to(SAMPLES)
    monkeypatch.chdir(tmp_path)
    assert cli("report", "mlp-spiky").code == 0


def test_a_path_wins_over_a_name(cli, monkeypatch, tmp_path):
    monkeypatch.chdir(SAMPLES.parent)
    result = cli("report", "sample_runs/mlp-diverged", "--runs-dir", tmp_path)
    assert result.code == 1 and "mlp-diverged" in result.stdout


@pytest.mark.parametrize(
    "argument,message",
    [
        ("mlp-spikey", "no run 'mlp-spikey' in {samples}; did you mean 'mlp-spiky'?"),
        ("zzz", "no run 'zzz' in {samples}; runs there: grokking, grokking-wd, mlp, "),
        ("{samples}/mlp/meta.json", "is a run's meta.json; name the run folder: {samples}/mlp"),
        ("{samples}", "is a folder of runs (grokking, grokking-wd, mlp, …), not a run"),
        ("{samples}/mlp/scalars", "not a gradlens run (no meta.json)"),
        ("no/such/run", "no/such/run: no such run folder"),
    ],
)
def test_what_is_not_a_run_says_what_it_is(cli, argument, message):
    result = cli("report", argument.format(samples=SAMPLES), "--runs-dir", SAMPLES)
    assert result.code == 2
    (line,) = result.error_lines
    assert line.startswith("gradlens: error: ") and message.format(samples=SAMPLES) in line


def test_missing_runs_folder_says_how_to_set_it(cli, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    result = cli("compare", "mlp", "mlp-spiky")
    assert result.code == 2
    assert result.error_lines == [
        "gradlens: error: no run 'mlp': not a path, and the runs folder runs does not exist "
        "(set --runs-dir or GRADLENS_DIR)"
    ]


def test_ls_on_a_run_or_a_file_says_so(cli):
    run = cli("ls", SAMPLES / "mlp")
    assert run.code == 2
    assert run.error_lines == [
        f"gradlens: error: {SAMPLES / 'mlp'} is a run, not a folder of runs; list its folder "
        f"(gradlens ls {SAMPLES}) or report on it (gradlens report {SAMPLES / 'mlp'})"
    ]
    file = cli("ls", SAMPLES / "mlp" / "meta.json")
    assert file.code == 2 and file.error_lines == [
        f"gradlens: error: {SAMPLES / 'mlp' / 'meta.json'} is a file, not a folder of runs"
    ]


def test_names_through_the_real_cli():
    env = cli_env(GRADLENS_DIR=str(SAMPLES))
    result = gradlens_cli("compare", "mlp", "mlp-spikey", env=env)
    assert result.returncode == 2
    assert result.stderr == (
        f"gradlens: error: no run 'mlp-spikey' in {SAMPLES}; did you mean 'mlp-spiky'?\n"
    )


def test_watch_names_the_run_after_its_script_without_a_leading_underscore(tmp_path):
    pytest.importorskip("torch")  # watch is torch code (absent in the floors check)
    script = tmp_path / "_train.py"
    script.write_text(
        "import torch\n\nm = torch.nn.Linear(2, 1)\nopt = torch.optim.SGD(m.parameters(), 0.1)\n"
        "m(torch.ones(1, 2)).sum().backward()\nopt.step()\n"
    )
    runs = tmp_path / "runs"
    result = gradlens_cli("watch", "--runs-dir", str(runs), str(script))
    assert result.returncode == 0, result.stderr
    assert [p.name for p in runs.iterdir()] == ["train"]


def test_a_run_named_in_any_script_is_found_listed_and_compared(cli, tmp_path):
    for name, sample in (("обучение", "mlp"), ("学习", "mlp-spiky")):
        shutil.copytree(SAMPLES / sample, tmp_path / name)
    report = cli("report", "обучение", "--runs-dir", tmp_path, "-f", "json")
    assert report.code == 0, report.stderr
    compare = cli("compare", "обучение", "学习", "--runs-dir", tmp_path, "-f", "json")
    assert [r["run"] for r in json.loads(compare.stdout)["runs"]] == ["обучение", "学习"]
    names = [line.split()[0] for line in cli("ls", tmp_path).stdout.splitlines()[1:3]]
    assert names == ["обучение", "学习"]
