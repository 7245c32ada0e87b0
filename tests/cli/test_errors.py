"""Every bad input is one line on stderr and exit 2 (never 1: that means "findings" to CI)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from tests.cli.conftest import SAMPLES
from tests.conftest import ROOT, cli_env, gradlens_cli


def _one_line_exit_2(result, *fragments):
    assert result.code == 2, (result.stdout, result.stderr)
    (line,) = result.error_lines
    assert line.startswith("gradlens: error: "), line
    for fragment in fragments:
        assert fragment in line, line
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    return line


@pytest.mark.parametrize(
    "toml,fragments",
    [
        ("report = 5\n", ["[report] must be a table, got int 5"]),
        ('thresholds = "x"\n', ["[thresholds] must be a table, got str 'x'"]),
        ("[report]\nfail_on = 3\n", ["fail_on must be a string, got 3"]),
        ("[thresholds]\nwindow_fraction = 2.0\n", ["'window_fraction' is a fraction"]),
        ("[thresholds]\nexploding_ratio = -1\n", ["'exploding_ratio' must be > 0"]),
        ("[thresholds]\nspike_gap = -3\n", ["'spike_gap' must be >= 0"]),
    ],
)
def test_bad_config_file(cli, tmp_path, toml, fragments):
    config = tmp_path / "gradlens.toml"
    config.write_text(toml)
    line = _one_line_exit_2(cli("report", SAMPLES / "mlp", "--config", config), *fragments)
    assert line.count(str(config)) == 1


def test_auto_found_pyproject_with_a_bad_tool_table(cli, tmp_path, monkeypatch):
    (tmp_path / "pyproject.toml").write_text("tool = 5\n")
    monkeypatch.chdir(tmp_path)
    _one_line_exit_2(cli("report", SAMPLES / "mlp"), "pyproject.toml: [tool] must be a table")
    (tmp_path / "pyproject.toml").write_text("[tool]\ngradlens = 'x'\n")
    _one_line_exit_2(cli("report", SAMPLES / "mlp"), "[tool.gradlens] must be a table")


@pytest.mark.parametrize(
    "override,fragment",
    [
        ("window_fraction=nan", "'window_fraction' must be a finite number, got nan"),
        ("divergence_ratio=inf", "'divergence_ratio' must be a finite number, got inf"),
        ("window_fraction=0", "'window_fraction' must be > 0"),
    ],
)
def test_bad_threshold_override(cli, override, fragment):
    _one_line_exit_2(cli("report", SAMPLES / "mlp", "-t", override), fragment)


def test_unwritable_step_summary(cli, monkeypatch, tmp_path):
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "missing" / "summary.md"))
    _one_line_exit_2(cli("report", SAMPLES / "mlp"), "cannot append to $GITHUB_STEP_SUMMARY")
    assert cli("report", SAMPLES / "mlp", "--no-step-summary").code == 0


@pytest.mark.parametrize(
    "probe,fragments",
    [
        ("hessian.every=inf", ["--probe hessian.every=inf: needs an integer"]),
        ("hessian.tol=nan", ["--probe hessian.tol=nan: needs a finite number"]),
        (
            "hessian.evry=10",
            ["hessian has no option 'evry' (did you mean 'every'?); valid: every, at_end, mode"],
        ),
        ("hesian.k=3", ["unknown probe 'hesian' (did you mean 'hessian'?); valid: hessian"]),
    ],
)
def test_probe_options_are_checked_before_the_script_runs(cli, tmp_path, probe, fragments):
    pytest.importorskip("torch")  # the probes are torch code (absent in the floors check)
    script = tmp_path / "train.py"
    script.write_text("raise SystemExit('the script must not run')\n")
    line = _one_line_exit_2(
        cli("watch", "--runs-dir", tmp_path / "runs", "--probe", probe, script), *fragments
    )
    assert "__init__" not in line and "keyword argument" not in line
    assert not (tmp_path / "runs").exists()


def test_bad_run_name_runs_folder_and_output_file(cli, tmp_path):
    pytest.importorskip("torch")  # watch is torch code (absent in the floors check)
    script = tmp_path / "train.py"
    script.write_text("raise SystemExit('the script must not run')\n")
    a_file = tmp_path / "afile"
    a_file.write_text("")
    for args in (
        ["watch", "--runs-dir", tmp_path / "runs", "--name", "bad name", script],
        ["watch", "--runs-dir", a_file, script],
        ["watch", "--probe", "hessian.which=XX", script],
        ["report", SAMPLES / "mlp", "-o", tmp_path / "missing" / "r.txt"],
    ):
        _one_line_exit_2(cli(*args))
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("every", ["1000001", str(10**20), "2000000000"])
def test_every_is_bounded(cli, tmp_path, every):
    script = tmp_path / "train.py"
    script.write_text("raise SystemExit('the script must not run')\n")
    _one_line_exit_2(cli("watch", "--every", every, script), "--every")


def test_choice_errors_read_as_sentences(cli):
    line = _one_line_exit_2(cli("report", SAMPLES / "mlp", "--format", "html"), "'html'")
    assert line == (
        "gradlens: error: Invalid value for '--format' / '-f': 'html' is not one of 'text', "
        "'markdown', 'json', 'junit'."
    )


def test_no_arguments_prints_help_and_no_empty_error(cli):
    result = cli()
    assert result.code == 2 and result.stderr == ""
    assert "Usage: gradlens" in result.stdout and "report" in result.stdout


def _damaged(samples, folder, **meta):
    path = samples / folder
    data = json.loads((path / "meta.json").read_text())
    data.update(meta)
    (path / "meta.json").write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    "meta",
    [
        {"layers": "x"},
        {"start_time": 1e20},
        {"start_time": float("nan"), "end_time": float("nan")},
        {"versions": "oops"},
        {"steps": "many"},
    ],
)
def test_meta_of_the_wrong_types_is_one_line_or_ignored_never_a_crash(cli, samples, meta):
    bad = _damaged(samples, "mlp-spiky", **meta)
    for args in (["report", bad], ["compare", samples / "mlp", bad]):
        result = cli(*args)
        assert result.code in (0, 2), result.stderr
        assert "Traceback" not in result.stderr and "internal error" not in result.stderr
        if result.code == 2:
            (line,) = result.error_lines
            assert line.startswith("gradlens: error: ") and "mlp-spiky" in line
    listing = cli("ls", samples)
    assert listing.code == 0 and listing.stderr == ""
    names = [line.split()[0] for line in listing.stdout.splitlines()[1:] if line.strip()]
    assert {"mlp", "mlp-spiky", "mlp-diverged"} <= set(names) | {n.rstrip(":") for n in names}


def test_an_unreadable_run_is_listed_as_such_with_the_others(cli, samples):
    (samples / "mlp-spiky" / "meta.json").write_text('{"name": ')
    listing = cli("ls", samples)
    assert listing.code == 0
    rows = {line.split()[0]: line for line in listing.stdout.splitlines() if line.strip()}
    assert "unreadable" in rows["mlp-spiky"]
    assert "finished" in rows["mlp"] and "finished" in rows["mlp-diverged"]
    assert any(line.startswith("mlp-spiky: ") for line in listing.stdout.splitlines())
    _one_line_exit_2(cli("report", samples / "mlp-spiky"), "mlp-spiky", "meta.json")
    _one_line_exit_2(cli("compare", samples / "mlp", samples / "mlp-spiky"), "mlp-spiky")


def test_rich_markup_in_names_is_printed_not_obeyed(cli, samples):
    markup = "[/bold]x[red]y"
    _damaged(samples, "mlp-spiky", name=markup)
    report = cli("report", samples / "mlp-spiky")
    assert report.code == 0 and f"gradlens report  {markup}  finished" in report.stdout
    odd = samples / "[bold]odd[red]"
    (samples / "mlp").rename(odd)
    compare = cli("compare", odd, samples / "mlp-spiky")  # runs named by their folders
    assert compare.code == 0 and "[bold]odd[red]" in compare.stdout
    listing = cli("ls", samples)
    assert listing.code == 0 and "[bold]odd[red]" in listing.stdout
    assert cli("report", odd).code == 0


def _busy_port():
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def test_dashboard_on_a_busy_port_or_unknown_host(cli):
    with _busy_port() as sock:
        port = sock.getsockname()[1]
        result = cli("dashboard", SAMPLES, "--port", port)
    line = _one_line_exit_2(result, f"cannot serve on 127.0.0.1:{port}", "--port")
    assert "http://" not in result.stderr + result.stdout
    _one_line_exit_2(cli("dashboard", SAMPLES, "--host", "no-such-host.invalid"), "unknown host")
    _one_line_exit_2(cli("dashboard", SAMPLES / "mlp"), "is a run, not a folder of runs")
    assert line


def test_busy_port_through_the_real_cli():
    with _busy_port() as sock:
        port = sock.getsockname()[1]
        result = gradlens_cli("dashboard", str(SAMPLES), "--port", str(port), timeout=60)
    assert result.returncode == 2
    assert result.stderr == (
        f"gradlens: error: cannot serve on 127.0.0.1:{port}: Address already in use "
        "(choose another --port)\n"
    )
    assert result.stdout == ""


def test_no_arguments_through_the_real_cli():
    result = subprocess.run(
        [sys.executable, "-m", "gradlens"],
        capture_output=True,
        text=True,
        env=cli_env(),
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 2 and result.stderr == "" and "Usage" in result.stdout
    assert os.environ.get("GRADLENS_STRICT") == "1"
