"""One definition per number: report, compare, ls (and the dashboard's summarize) agree.

The oracle is computed here from the raw tables: final loss = mean over the last 5% of the
steps (non-finite if any of them is), spikes = steps with a spike event.
"""

from __future__ import annotations

import json
import math

import pytest

from gradlens.report import summarize
from gradlens.report.format import loss_value
from gradlens.store import open_run
from tests.cli.conftest import SAMPLES
from tests.conftest import gradlens_cli

RUNS = ["mlp", "mlp-spiky", "mlp-diverged", "grokking"]


def _oracle(name):
    run = open_run(SAMPLES / name)
    scalars = run.table("scalars")
    loss = scalars[(scalars.metric == "loss") & (scalars["index"] == 0)].sort_values("step")
    values = loss["value"].to_numpy()
    tail = values[-math.ceil(len(values) * 0.05) :]
    final = float(tail.mean()) if all(math.isfinite(v) for v in tail) else math.nan
    events = run.table("events")
    loss_steps = events[events.kind == "loss_spike"].step.nunique()
    grad_steps = events[events.kind.isin(["grad_spike", "layer_grad_spike"])].step.nunique()
    # a NaN/Inf event, or a gradient norm that overflowed before any entry did
    norm = scalars[(scalars.metric == "grad_norm") & (scalars["index"] == 0)]
    overflow = set(norm[~norm.value.map(math.isfinite)].step)
    nonfinite = len(set(events[events.kind.str.startswith("nonfinite")].step) | overflow)
    return final, int(loss_steps), int(grad_steps), int(nonfinite)


def _same(a, b):
    return (a is None and b is None) or (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b)


def test_report_compare_and_summary_agree_with_the_oracle(cli):
    compare = cli("compare", *RUNS, "--runs-dir", SAMPLES, "-f", "json")
    rows = {r["run"]: r for r in json.loads(compare.stdout)["runs"]}
    for name in RUNS:
        final, loss_steps, grad_steps, nonfinite = _oracle(name)
        report = json.loads(cli("report", name, "--runs-dir", SAMPLES, "-f", "json").stdout)
        summary = summarize(open_run(SAMPLES / name))
        got = report["run"]["final_loss"]
        assert _same(math.nan if got is None else got, final), name
        assert _same(summary.final_loss, final), name
        assert _same(
            math.nan if rows[name]["final_loss"] is None else rows[name]["final_loss"], final
        )
        assert rows[name]["loss_spike_steps"] == summary.loss_spike_steps == loss_steps
        assert rows[name]["grad_spike_steps"] == summary.grad_spike_steps == grad_steps
        assert rows[name]["nonfinite_steps"] == summary.nonfinite_steps == nonfinite
        assert rows[name]["errors"] == report["counts"]["error"] == summary.counts["error"]
        assert rows[name]["warnings"] == report["counts"]["warning"]


def test_the_same_final_loss_is_printed_by_every_command(cli):
    ls = cli("ls", SAMPLES).stdout
    compare = cli("compare", *RUNS, "--runs-dir", SAMPLES).stdout
    for name in RUNS:
        shown = loss_value(_oracle(name)[0])
        text = cli("report", name, "--runs-dir", SAMPLES).stdout
        markdown = cli("report", name, "--runs-dir", SAMPLES, "-f", "markdown").stdout
        assert f"final loss {shown} (mean of last 5% of steps)" in text, name
        assert f"**final loss** {shown} (mean of last 5% of steps)" in markdown, name
        (row,) = [line for line in ls.splitlines() if line.startswith(f"{name} ")]
        assert f" {shown} " in row, (name, row)
        assert f" {shown} " in compare, name


def test_spike_counts_say_what_they_count(cli):
    _, loss_steps, grad_steps, _ = _oracle("mlp-spiky")
    assert (loss_steps, grad_steps) == (5, 3)  # 19 events: 5 loss, 2 global, 12 per layer
    text = cli("report", "mlp-spiky", "--runs-dir", SAMPLES).stdout
    assert "steps with a spike 5 loss, 3 gradient" in text
    compare = cli("compare", "mlp", "mlp-spiky", "--runs-dir", SAMPLES).stdout
    (line,) = [line for line in compare.splitlines() if "steps with a spike" in line]
    assert "0, 0" in line and "5, 3" in line


def test_a_diverged_run_never_looks_healthy(cli):
    ls = cli("ls", SAMPLES)
    (row,) = [line for line in ls.stdout.splitlines() if line.startswith("mlp-diverged ")]
    assert "non-finite" in row and "1 error" in row
    (healthy,) = [line for line in ls.stdout.splitlines() if line.startswith("mlp ")]
    assert "no findings" in healthy
    compare = cli("compare", "mlp", "mlp-diverged", "--runs-dir", SAMPLES).stdout
    (findings,) = [line for line in compare.splitlines() if "findings" in line]
    assert "no findings" in findings and "1 error" in findings
    (final,) = [line for line in compare.splitlines() if "final loss" in line]
    assert "non-finite" in final
    markdown = cli("report", "mlp-diverged", "--runs-dir", SAMPLES, "-f", "markdown").stdout
    assert markdown.startswith("## gradlens report: `mlp-diverged` — ❌ 1 error")


def test_warnings_are_not_called_healthy(cli):
    text = cli("report", "mlp-spiky", "--runs-dir", SAMPLES).stdout
    assert "passed at fail-on error: no errors, 2 warnings → exit 0" in text
    assert "healthy" not in text
    markdown = cli("report", "mlp-spiky", "--runs-dir", SAMPLES, "-f", "markdown").stdout
    assert markdown.startswith("## gradlens report: `mlp-spiky` — ⚠️ no errors, 2 warnings\n")
    assert "✅" not in markdown


def test_ls_through_the_real_cli():
    result = gradlens_cli("ls", str(SAMPLES))
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == [
        "name",
        "status",
        "steps",
        "final",
        "loss",
        "health",
        "started",
        "duration",
    ]
    spiky = next(r for r in rows if r.startswith("mlp-spiky "))
    assert "finished" in spiky and " 300 " in spiky and "2 warnings" in spiky


def test_ls_health_follows_the_report_config(cli, tmp_path, monkeypatch):
    config = "[thresholds]\nspike_gap = 0\nloss_spike_max_clusters = 0\n"
    (tmp_path / "gradlens.toml").write_text(config)
    monkeypatch.chdir(tmp_path)
    report = json.loads(cli("report", SAMPLES / "mlp-spiky", "-f", "json").stdout)
    assert report["counts"]["error"] == 1  # repeated spikes are now an error

    def row(*options):
        lines = cli("ls", SAMPLES, *options).stdout.splitlines()
        (line,) = [line for line in lines if line.startswith("mlp-spiky ")]
        return line

    assert "1 error" in row()
    assert "2 warnings" in row("-t", "spike_gap=10", "-t", "loss_spike_max_clusters=3")
