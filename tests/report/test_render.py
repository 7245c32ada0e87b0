"""Renderers: fixed-width text, markdown, JSON against its schema, JUnit as XML."""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET

import jsonschema
import numpy as np
from rich.console import Console

from gradlens.report import (
    RULES,
    build_report,
    render_json,
    render_junit,
    render_markdown,
    report_renderable,
)
from gradlens.report.config import ReportConfig
from gradlens.report.format import sparkline
from gradlens.report.render_json import schema
from gradlens.store import open_run
from tests.report.craft import craft_run, decreasing_loss


def _spiky_run(runs_dir):
    loss = decreasing_loss(200)
    loss[120] = 9.0
    events = [
        {
            "step": 120,
            "kind": "loss_spike",
            "metric": "loss",
            "value": 9.0,
            "baseline": 0.3,
            "ratio": 30.0,
        }
    ]
    layers = {"grad_norm": np.ones((200, 3)), "update_ratio": np.full((200, 3), 1e-3)}
    layers["update_ratio"][:, 1] = 0.4
    return craft_run(runs_dir, "spiky", loss=loss, events=events, layers=layers)


def _text(report, width=100):
    console = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False)
    console.print(report_renderable(report))
    return console.file.getvalue()


def test_text_report_shows_header_findings_layers_and_verdict(runs_dir):
    report = build_report(open_run(_spiky_run(runs_dir)))
    out = _text(report)
    assert "gradlens report  spiky  finished" in out
    assert "steps 200" in out and "duration 1m00s" in out
    assert "loss  " in out and "█" in out
    assert "loss_spikes" in out and "120" in out and "30.0×" in out
    assert "update_ratio" in out and "layer1.weight" in out
    assert "Layers (median over the last 20% of steps)" in out
    assert "passed at fail-on error: no errors, 2 warnings → exit 0" in out
    assert "healthy" not in out  # warnings are not "healthy"


def test_text_verdict_at_warning_level(runs_dir):
    report = build_report(open_run(_spiky_run(runs_dir)), ReportConfig(fail_on="warning"))
    assert "UNHEALTHY: no errors, 2 warnings (fail-on warning) → exit 1" in _text(report)


def test_markdown_has_verdict_and_findings_table(runs_dir):
    md = render_markdown(build_report(open_run(_spiky_run(runs_dir))))
    assert md.startswith("## gradlens report: `spiky` — ⚠️ no errors, 2 warnings\n")
    assert "healthy" not in md
    assert "| severity | rule | steps | layer | evidence |" in md
    assert "| warning | loss_spikes | 120 | - |" in md


def test_markdown_has_the_layer_rankings_the_text_report_has(runs_dir):
    report = build_report(open_run(_spiky_run(runs_dir)))
    md, text = render_markdown(report), _text(report)
    assert "### Layers (median over the last 20% of steps)" in md
    table = md.split("### Layers")[1].split("\n\n")[1].splitlines()
    assert table[0] == "| metric | rank | layer | value |"
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table[2:]]
    largest = report.layers["grad_norm_largest"][0]
    assert rows[0] == ["gradient norm", "largest", largest[0], f"{largest[1]:.3g}"]
    for _, _, layer, value in rows:
        assert layer in text and value in text  # the same rankings as the terminal's


def test_json_validates_against_schema(runs_dir):
    report = build_report(open_run(_spiky_run(runs_dir)), ReportConfig(fail_on="warning"))
    data = json.loads(render_json(report))
    jsonschema.validate(data, schema())
    assert data["exit_code"] == 1 and data["counts"] == {"error": 0, "warning": 2, "info": 0}
    assert {f["rule"] for f in data["findings"]} == {"loss_spikes", "update_ratio"}
    assert len(data["rules"]) == len(RULES)


def test_json_of_a_nan_run_is_valid_json(runs_dir):
    loss = decreasing_loss(50)
    loss[30:] = np.nan
    events = [{"step": 30, "kind": "nonfinite_loss", "metric": "loss", "value": np.nan}]
    report = build_report(open_run(craft_run(runs_dir, "nan", loss=loss, events=events)))
    text = render_json(report)
    data = json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    jsonschema.validate(data, schema())


def test_junit_one_testcase_per_rule(runs_dir):
    report = build_report(open_run(_spiky_run(runs_dir)), ReportConfig(fail_on="warning"))
    root = ET.fromstring(render_junit(report))
    (suite,) = root.findall("testsuite")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == [r.name for r in RULES]
    failed = {c.get("name") for c in cases if c.find("failure") is not None}
    assert failed == {"loss_spikes", "update_ratio"}
    assert suite.get("failures") == "2" and suite.get("tests") == str(len(RULES))
    # below the fail level: the test passes, the finding is kept as output
    report = build_report(open_run(runs_dir / "spiky"))
    root = ET.fromstring(render_junit(report))
    assert root.find(".//failure") is None
    assert "loss spike" in root.find(".//testcase[@name='loss_spikes']/system-out").text


def test_sparkline():
    assert sparkline([1, 2, 3, 4]) == "▁▃▆█"
    assert sparkline([1, float("nan"), 2]) == "▁×█"
    assert sparkline([1, 10, 100, 1000]) == "▁▃▆█"  # log scale: evenly spaced
    assert sparkline([]) == ""
