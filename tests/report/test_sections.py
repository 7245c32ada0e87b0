"""Probe sections say when a number is not what was asked for: a trace whose budget fell
short, the HVP engine and its finite-difference check, a landscape's check error."""

from __future__ import annotations

import numpy as np

import gradlens
from gradlens.report.data import RunData
from gradlens.report.sections import hessian_section, landscape_section
from gradlens.store import RunWriter
from tests.report.craft import craft_run, decreasing_loss


def _rows(section) -> dict[str, str]:
    return dict(section.rows)


def test_hessian_section_flags_a_trace_short_of_its_budget_and_names_the_engine(runs_dir):
    run_dir = craft_run(runs_dir, loss=decreasing_loss(20))
    rows = [
        ("top_eigenvalue", "", 0, 5.0),
        ("top_residual", "", 0, 1e-4),
        ("trace", "", 0, 64.9),
        ("trace_stderr", "", 0, 0.94),
        ("trace_reached", "", 0, 0.0),
        ("hvp_engine", "double_backward", 0, 1.0),
        ("fd_check_error", "double_backward", 0, 2.2e-3),
        ("fd_check_passed", "", 0, 0.0),
    ]
    writer = RunWriter(run_dir, strict=True)
    writer.write(
        "hessian",
        {
            "step": [19] * len(rows),
            "metric": [r[0] for r in rows],
            "layer": [r[1] for r in rows],
            "index": [r[2] for r in rows],
            "value": [r[3] for r in rows],
        },
    )
    writer.close()
    section = _rows(hessian_section(RunData(gradlens.open_run(run_dir))))
    assert section["trace"] == "64.9 ± 0.94 (the HVP budget could not reach the requested error)"
    assert section["HVP engine"] == (
        "double_backward; finite differences failed, not used (rel. error 0.0022)"
    )


def test_landscape_section_shows_the_check_error(runs_dir):
    run_dir = craft_run(runs_dir, loss=decreasing_loss(20))
    writer = RunWriter(run_dir, strict=True)
    writer.write(
        "landscape",
        {
            "step": [19, 19, 19],
            "slice": ["filter-2d"] * 3,
            "metric": ["loss", "roughness", "check_error"],
            "alpha": [0.0, np.nan, np.nan],
            "beta": [0.0, np.nan, np.nan],
            "value": [1.5, 0.2, 4.8e-7],
        },
    )
    writer.close()
    section = _rows(landscape_section(RunData(gradlens.open_run(run_dir))))
    assert section["filter-2d"].endswith("check error 4.8e-07")
