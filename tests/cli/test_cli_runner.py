"""The typer app in-process through ``typer.testing.CliRunner`` on the sample runs: how options
parse (short and long names, repeats, environment variables, flag pairs) and the exit code of
each outcome. No subprocess, no torch.

What ``main`` adds on top of the app (one line on stderr, exit 2) is checked with the ``cli``
fixture (tests/cli/test_errors.py) and through the real CLI; here each bad input is checked to
reach ``main`` as one of the two errors it turns into that line, with a one-line message.
"""

from __future__ import annotations

import json
import shutil

import jsonschema
import pytest
import typer
from typer.testing import CliRunner, Result

from gradlens.cli.main import app
from gradlens.errors import GradlensError
from gradlens.report import compare_schema
from tests.cli.conftest import SAMPLES

runner = CliRunner()
ENV = {"COLUMNS": "100", "NO_COLOR": "1", "GITHUB_STEP_SUMMARY": None, "GRADLENS_DIR": None}
COMMANDS = ("watch", "report", "compare", "ls", "dashboard")
# click's usage errors, reached as ``main`` reaches them (typer vendors click from 0.26 on).
CLICK_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def invoke(*args: object, **env: str) -> Result:
    """The app as a shell runs it (standalone): exit codes from ``typer.Exit`` and click."""
    return runner.invoke(app, [str(a) for a in args], env={**ENV, **env}, prog_name="gradlens")


def raised(*args: object) -> BaseException | None:
    """What the app raises for ``args`` when called as ``main`` calls it."""
    result = runner.invoke(
        app, [str(a) for a in args], env=ENV, prog_name="gradlens", standalone_mode=False
    )
    assert result.stdout == "", result.stdout  # nothing half-printed before the error
    return result.exception


def _report(result: Result) -> dict:
    assert result.stdout, result.output
    return json.loads(result.stdout)


def test_help_lists_every_command_and_h_is_help():
    full = invoke("--help")
    assert full.exit_code == 0
    assert "Usage: gradlens [OPTIONS] COMMAND [ARGS]..." in full.stdout
    for command in COMMANDS:
        assert f" {command} " in full.stdout, command
    assert invoke("-h").stdout == full.stdout
    assert invoke("report", "-h").stdout == invoke("report", "--help").stdout


@pytest.mark.parametrize(
    "run,fail_on,code",
    [
        ("mlp", None, 0),
        ("mlp-spiky", None, 0),  # two warnings; the default bar is error
        ("mlp-spiky", "warning", 1),
        ("mlp-diverged", None, 1),
        ("mlp-diverged", "never", 0),
    ],
)
def test_report_exit_code_follows_fail_on(run, fail_on, code):
    args = ["report", SAMPLES / run, "-f", "json"]
    result = invoke(*args, *(["--fail-on", fail_on] if fail_on else []))
    assert result.exit_code == code, result.output
    assert _report(result)["exit_code"] == code


def test_report_short_and_long_option_names_and_repeated_thresholds(tmp_path):
    long, short = tmp_path / "long.json", tmp_path / "short.json"
    both = ["loss_spike_max_clusters=0", "grad_spike_max_clusters=0"]  # one error each
    results = [
        invoke("report", SAMPLES / "mlp-spiky", "--format", "json", "--output", long,
               "--threshold", both[0], "--threshold", both[1]),
        invoke("report", SAMPLES / "mlp-spiky", "-f", "json", "-o", short,
               "-t", both[0], "-t", both[1]),
    ]  # fmt: skip
    for result in results:
        assert result.exit_code == 1 and result.stdout == "", result.output
    data = json.loads(long.read_text())
    assert data == json.loads(short.read_text())
    errors = sorted(f["rule"] for f in data["findings"] if f["severity"] == "error")
    assert errors == ["grad_spikes", "loss_spikes"]  # both overrides applied, not the last
    for one in both:
        counts = _report(invoke("report", SAMPLES / "mlp-spiky", "-f", "json", "-t", one))
        assert counts["counts"]["error"] == 1


def test_a_run_by_name_in_runs_dir_or_in_gradlens_dir():
    by_option = invoke("report", "mlp", "--runs-dir", SAMPLES)
    by_env = invoke("report", "mlp", GRADLENS_DIR=str(SAMPLES))
    by_path = invoke("report", SAMPLES / "mlp")
    assert by_option.exit_code == by_env.exit_code == by_path.exit_code == 0
    assert by_option.stdout.startswith("gradlens report  mlp  finished")
    assert by_option.stdout == by_env.stdout == by_path.stdout


def test_step_summary_flag_pair(tmp_path):
    summary = tmp_path / "summary.md"
    assert invoke("report", SAMPLES / "mlp", "--no-step-summary",
                  GITHUB_STEP_SUMMARY=str(summary)).exit_code == 0  # fmt: skip
    assert not summary.exists()
    assert invoke("report", SAMPLES / "mlp", GITHUB_STEP_SUMMARY=str(summary)).exit_code == 0
    assert summary.read_text().startswith("## gradlens report: `mlp`")


def test_compare_runs_by_name_in_order_with_fail_on_and_output(tmp_path):
    names = ["mlp", "mlp-spiky", "mlp-diverged"]
    result = invoke("compare", *names, "--runs-dir", SAMPLES, "-f", "json")
    assert result.exit_code == 1, result.output  # the diverged run has an error
    data = _report(result)
    jsonschema.validate(data, compare_schema())
    assert [r["run"] for r in data["runs"]] == names and data["exit_code"] == 1
    assert {d["baseline"] for d in data["layer_differences"]} == {"mlp"}
    output = tmp_path / "compare.txt"
    relaxed = invoke("compare", *names, "--runs-dir", SAMPLES, "--fail-on", "never", "-o", output)
    assert relaxed.exit_code == 0 and relaxed.stdout == ""
    assert all(name in output.read_text() for name in names)


def test_ls_lists_every_run_from_its_argument_or_gradlens_dir_and_takes_thresholds():
    listing = invoke("ls", SAMPLES)
    assert listing.exit_code == 0
    rows = {line.split()[0]: line.split() for line in listing.stdout.splitlines() if line}
    for run in ("mlp", "mlp-spiky", "mlp-diverged", "tiny-gpt", "grokking", "grokking-wd"):
        assert rows[run][1] == "finished", rows.get(run)
    assert rows["mlp-spiky"][4:6] == ["2", "warnings"]
    assert invoke("ls", GRADLENS_DIR=str(SAMPLES)).stdout == listing.stdout
    strict = invoke("ls", SAMPLES, "-t", "loss_spike_max_clusters=0", "--threshold",
                    "grad_spike_max_clusters=0")  # fmt: skip
    assert strict.exit_code == 0  # ls lists; it does not judge
    spiky = next(line for line in strict.stdout.splitlines() if line.startswith("mlp-spiky "))
    assert spiky.split()[4:6] == ["2", "errors"]


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["report", SAMPLES / "mlp", "--format", "pdf"], "'pdf'"),
        (["report", SAMPLES / "mlp", "--fail-on", "sometimes"], "'sometimes'"),
        (["report", SAMPLES / "mlp", "--bogus"], "--bogus"),
        (["report"], "RUN"),
        (["compare"], "RUN_A RUN_B"),
        (["ls", SAMPLES, "--threshold"], "--threshold"),
        (["watch", "--every", "0", "train.py"], "--every"),
        (["watch", "--probes", "expensive", "train.py"], "'expensive'"),
        (["watch", "--status", "loud", "train.py"], "'loud'"),
        (["watch", "--updates-from", "memory", "train.py"], "'memory'"),
        (["watch"], "SCRIPT"),
        (["dashboard", SAMPLES, "--port", "70000"], "--port"),
        (["nosuchcommand"], "nosuchcommand"),
    ],
)
def test_usage_errors_exit_2_with_a_one_line_reason(args, fragment):
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert "Error" in result.stderr and result.stdout == ""
    error = raised(*args)
    assert isinstance(error, CLICK_ERROR), repr(error)
    (line,) = error.format_message().strip().splitlines()
    assert fragment in line, line


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["report", "mlp-spikey", "--runs-dir", SAMPLES], "did you mean 'mlp-spiky'?"),
        (["report", SAMPLES / "mlp", "-t", "novalue"], "--threshold expects NAME=VALUE"),
        (["report", SAMPLES / "mlp", "--threshold", "bogus=1"], "unknown threshold 'bogus'"),
        (["report", SAMPLES / "mlp", "--config", "no-such.toml"], "config file not found"),
        (["compare", SAMPLES / "mlp"], "compare needs at least two runs"),
        (["compare", SAMPLES / "mlp", SAMPLES / "nope"], "no such run folder"),
        (["ls", SAMPLES / "mlp"], "is a run, not a folder of runs"),
        (["dashboard", SAMPLES / "mlp"], "is a run, not a folder of runs"),
    ],
)
def test_input_errors_are_gradlens_errors_with_a_one_line_reason(args, fragment, tmp_path):
    error = raised(*args)
    assert isinstance(error, GradlensError), repr(error)
    (line,) = str(error).strip().splitlines()
    assert fragment in line, line
    assert invoke(*args).exit_code != 0


def test_report_to_a_missing_folder_writes_nothing_and_fails(tmp_path):
    output = tmp_path / "missing" / "report.txt"
    error = raised("report", SAMPLES / "mlp", "-o", output)
    assert isinstance(error, GradlensError) and f"cannot write {output}" in str(error)
    assert not output.parent.exists()


def test_compare_tells_apart_two_runs_of_the_same_name_by_their_paths(tmp_path):
    first, second = tmp_path / "a" / "mlp", tmp_path / "b" / "mlp"
    shutil.copytree(SAMPLES / "mlp", first)
    shutil.copytree(SAMPLES / "mlp-spiky", second)
    data = _report(invoke("compare", first, second, "-f", "json"))
    jsonschema.validate(data, compare_schema())
    assert [r["run"] for r in data["runs"]] == [str(first), str(second)]
    assert {(d["run"], d["baseline"]) for d in data["layer_differences"]} == {
        (str(second), str(first))
    }
    text = invoke("compare", first, second, COLUMNS="250").stdout
    assert str(first) in text and str(second) in text


def test_output_dash_is_stdout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for command in (
        ["report", SAMPLES / "mlp"],
        ["compare", SAMPLES / "mlp", SAMPLES / "mlp-spiky"],
    ):
        result = invoke(*command, "-f", "json", "-o", "-")
        assert result.exit_code == 0 and json.loads(result.stdout)["schema_version"] == 1
    assert list(tmp_path.iterdir()) == []  # no file named '-'


def test_ls_piped_keeps_one_line_per_run_however_long_its_name(tmp_path):
    name = "a-long-run-name-" * 6
    shutil.copytree(SAMPLES / "mlp", tmp_path / name)
    shutil.copytree(SAMPLES / "mlp-spiky", tmp_path / "short")
    lines = invoke("ls", tmp_path).stdout.splitlines()
    assert [line.split()[:2] for line in lines[1:3]] == [[name, "finished"], ["short", "finished"]]
