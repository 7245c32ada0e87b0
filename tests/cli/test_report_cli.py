"""`gradlens report` and `gradlens compare` through the real CLI on recorded sample runs."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET

import jsonschema
import pytest

from gradlens.report.render_json import schema
from gradlens.store import update_meta
from tests.conftest import ROOT, cli_env, gradlens_cli

SAMPLES = ROOT / "sample_runs"


@pytest.mark.parametrize(
    "run,fail_on,code",
    [
        ("mlp", "error", 0),
        ("mlp", "warning", 0),
        ("mlp-spiky", "error", 0),
        ("mlp-spiky", "warning", 1),
        ("mlp-diverged", "error", 1),
        ("mlp-diverged", "never", 0),
    ],
)
def test_exit_codes_on_sample_runs(run, fail_on, code):
    result = gradlens_cli("report", str(SAMPLES / run), "--fail-on", fail_on)
    assert result.returncode == code, result.stdout + result.stderr


def test_spiky_run_findings_in_every_format(tmp_path):
    text = gradlens_cli("report", str(SAMPLES / "mlp-spiky"))
    assert "loss_spikes" in text.stdout and "151–155" in text.stdout
    assert "grad_spikes" in text.stdout
    out = tmp_path / "report.json"
    gradlens_cli("report", str(SAMPLES / "mlp-spiky"), "-f", "json", "-o", str(out))
    data = json.loads(out.read_text())
    jsonschema.validate(data, schema())
    spikes = [f for f in data["findings"] if f["rule"] == "loss_spikes"]
    assert spikes[0]["step_start"] == 151 and spikes[0]["severity"] == "warning"
    junit = gradlens_cli(
        "report", str(SAMPLES / "mlp-spiky"), "-f", "junit", "--fail-on", "warning"
    )
    assert junit.returncode == 1
    cases = ET.fromstring(junit.stdout).findall(".//testcase")
    assert len(cases) == len(data["rules"])
    md = gradlens_cli("report", str(SAMPLES / "mlp-spiky"), "-f", "markdown")
    assert "| warning | loss_spikes | 151–155 |" in md.stdout


def test_diverged_run_names_the_nan(tmp_path):
    result = gradlens_cli("report", str(SAMPLES / "mlp-diverged"), "-f", "json")
    data = json.loads(result.stdout)
    (nan,) = [f for f in data["findings"] if f["rule"] == "nonfinite"]
    assert nan["severity"] == "error" and nan["layer"] and nan["step_start"] >= 1


def test_step_summary_is_appended(tmp_path):
    summary = tmp_path / "summary.md"
    summary.write_text("# earlier step\n")
    env = cli_env(GITHUB_STEP_SUMMARY=str(summary))
    for _ in range(2):
        gradlens_cli("report", str(SAMPLES / "mlp"), env=env)
    text = summary.read_text()
    assert text.startswith("# earlier step\n")
    assert text.count("## gradlens report: `mlp` — ✅ no findings") == 2
    gradlens_cli("report", str(SAMPLES / "mlp"), "--no-step-summary", env=env)
    assert summary.read_text() == text


def test_config_file_in_working_directory(tmp_path):
    (tmp_path / "gradlens.toml").write_text("[report]\nfail_on = 'warning'\n")
    result = gradlens_cli("report", str(SAMPLES / "mlp-spiky"), cwd=tmp_path)
    assert result.returncode == 1
    result = gradlens_cli("report", str(SAMPLES / "mlp-spiky"), "--fail-on", "error", cwd=tmp_path)
    assert result.returncode == 0
    relaxed = gradlens_cli(
        "report",
        str(SAMPLES / "mlp-spiky"),
        "-t",
        "spike_gap=1",
        "-t",
        "loss_spike_max_clusters=0",
        "-f",
        "json",
    )
    assert relaxed.returncode == 1  # 0 clusters allowed: repeated-spike error


@pytest.mark.parametrize(
    "args,message",
    [
        (["report", "no/such/run"], "no/such/run: no such run folder"),
        (["report", str(SAMPLES / "mlp"), "-t", "bogus=1"], "unknown threshold 'bogus'"),
        (["report", str(SAMPLES / "mlp"), "-t", "novalue"], "NAME=VALUE"),
        (["report", str(SAMPLES / "mlp"), "--format", "pdf"], "pdf"),
        (["compare", str(SAMPLES / "mlp")], "at least two runs"),
    ],
)
def test_usage_and_input_errors_are_one_line_exit_2(args, message):
    result = gradlens_cli(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("gradlens: error:")


def test_corrupt_table_is_exit_2(tmp_path):
    run = tmp_path / "broken"
    shutil.copytree(SAMPLES / "mlp", run)
    (part,) = (run / "layers").glob("*.parquet")
    part.write_bytes(part.read_bytes()[:100])
    result = gradlens_cli("report", str(run))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "unreadable" in result.stderr


def test_crashed_and_running_runs_are_reported_as_such(tmp_path):
    crashed = tmp_path / "crashed"
    shutil.copytree(SAMPLES / "mlp", crashed)
    update_meta(crashed, status="running", pid=2**22 + 4321, end_time=None)
    result = gradlens_cli("report", str(crashed), "-f", "json")
    data = json.loads(result.stdout)
    assert data["run"]["status"] == "crashed" and result.returncode == 1
    assert any(f["rule"] == "run_status" and f["severity"] == "error" for f in data["findings"])


def test_a_run_without_a_training_step_is_a_finding_not_a_pass(runs_dir, tmp_path):
    pytest.importorskip("torch")  # watch is torch code (absent in the floors check)
    script = tmp_path / "nothing.py"  # a model and an optimizer, but no step
    script.write_text(
        "import torch\nm = torch.nn.Linear(2, 1)\nopt = torch.optim.SGD(m.parameters(), 0.1)\n"
        "m(torch.ones(3, 2))\nprint('no training')\n"
    )
    assert gradlens_cli("watch", "--runs-dir", str(runs_dir), str(script)).returncode == 0
    report = gradlens_cli("report", str(runs_dir / "nothing"))
    assert report.returncode == 1 and "no training step recorded" in report.stdout
    # a script that saw no model at all leaves no run: report on it fails too (exit 2)
    script.write_text("import torch\nprint('no training')\n")
    assert (
        gradlens_cli("watch", "--runs-dir", str(runs_dir), "--name", "none", str(script)).returncode
        == 0
    )
    assert gradlens_cli("report", str(runs_dir / "none")).returncode == 2


def test_compare_side_by_side():
    result = gradlens_cli("compare", str(SAMPLES / "mlp"), str(SAMPLES / "mlp-spiky"), "-f", "json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert [r["run"] for r in data["runs"]] == ["mlp", "mlp-spiky"]
    assert data["runs"][0]["loss_spike_steps"] == 0 and data["runs"][1]["loss_spike_steps"] > 0
    worst = max(data["layer_differences"], key=lambda d: abs(d["max_ratio"] or 0))
    assert worst["max_step"] == 151 and worst["max_ratio"] > 5
    text = gradlens_cli("compare", str(SAMPLES / "mlp"), str(SAMPLES / "mlp-diverged"))
    assert text.returncode == 1 and "mlp-diverged" in text.stdout


def test_grokking_run_flags_softmax_collapse_where_the_loss_stalls():
    run = SAMPLES / "grokking"
    result = gradlens_cli("report", str(run), "-f", "json")
    data = json.loads(result.stdout)
    (collapse,) = [f for f in data["findings"] if f["rule"] == "softmax_collapse"]
    (spike,) = [f for f in data["findings"] if f["rule"] == "loss_spikes"]
    assert collapse["severity"] == "warning" and collapse["value"] > 0.5
    assert collapse["step_start"] < spike["step_start"]  # collapse comes before the blow-up
    from gradlens.store import open_run

    recorded = open_run(run)
    softmax = recorded.table("softmax", filters=[("metric", "==", "saturated_fraction")])
    fraction = softmax.set_index("step")["value"]
    loss = recorded.table("scalars", filters=[("metric", "==", "loss")]).set_index("step")["value"]
    onset = collapse["step_start"]
    assert fraction.loc[: onset - 200].max() < 0.05  # little saturation while the loss falls
    # the loss fell steadily before the onset (≈10× in 400 steps), then stalls: its minimum
    # comes within 250 steps while more and more samples saturate, and it never falls again
    before = loss.loc[onset - 400 : onset - 350].median() / loss.loc[onset - 50 : onset].median()
    assert before > 5, before
    after = loss.loc[onset : onset + 350]
    assert after.idxmin() <= onset + 250
    assert loss.loc[onset + 300 : onset + 350].median() >= after.min()
    assert fraction.loc[onset : onset + 250].max() > 0.5
