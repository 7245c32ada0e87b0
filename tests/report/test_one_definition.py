"""A number the report shows in two places is the same number (README: "same numbers for a
run, defined once"), and a report whose rules lacked their data does not say they passed."""

from __future__ import annotations

import numpy as np
from rich.console import Console

from gradlens.report import build_report
from gradlens.report.render_text import render_text
from gradlens.report.summary import summarize
from gradlens.store import open_run
from tests.report.craft import craft_run, decreasing_loss


def test_non_finite_steps_count_an_overflowed_gradient_norm_everywhere(runs_dir):
    """Steps 50–53: the gradient norm overflowed to inf, no entry was NaN (no event)."""
    norm = np.ones(200)
    norm[50:54] = np.inf
    run_dir = craft_run(runs_dir, loss=decreasing_loss(), scalars={"grad_norm": norm})
    run = open_run(run_dir)
    report = build_report(run)
    (finding,) = [f for f in report.findings if f.rule == "nonfinite"]
    assert finding.evidence.startswith("4 step(s) with non-finite values")
    assert summarize(run, findings=False).nonfinite_steps == 4


def test_rules_skipped_for_lack_of_data_are_not_said_to_pass(runs_dir):
    run_dir = craft_run(runs_dir, loss=decreasing_loss())  # scalars only, no layers table
    report = build_report(open_run(run_dir))
    assert not report.findings
    skipped = [r.rule for r in report.rules if r.status == "skipped"]
    assert "exploding_layers" in skipped
    console = Console(record=True, width=200)
    render_text(report, console)
    text = console.export_text()
    assert "every rule passed" not in text
    assert f"{len(skipped)} rule(s) skipped for lack of data" in text
