"""Features gradlens switched off, and signals it could not get, are in the report."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")  # the floors job runs the report tests without torch

import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import gradlens  # noqa: E402
from gradlens.capture.softmax import SoftmaxSignal  # noqa: E402
from gradlens.report import build_report  # noqa: E402
from gradlens.report.build import exit_code  # noqa: E402


def test_a_disabled_feature_is_a_warning_with_its_reason(runs_dir, monkeypatch):
    def broken(self, *args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setenv("GRADLENS_STRICT", "0")
    monkeypatch.setattr(SoftmaxSignal, "observe", broken)
    model = nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradlens.Lens(model, opt, runs_dir=runs_dir, name="half") as lens:
        for _ in range(30):
            opt.zero_grad()
            F.cross_entropy(model(torch.randn(8, 4)), torch.randint(0, 3, (8,))).backward()
            opt.step()
    report = build_report(gradlens.open_run(lens.run_dir))
    found = [f for f in report.findings if f.rule == "gradlens_health"]
    assert [(f.severity, f.message, f.evidence) for f in found] == [
        (
            "warning",
            "gradlens disabled softmax signals after an internal error",
            "RuntimeError: boom",
        )
    ]
    assert exit_code(report) == 0  # gradlens's own trouble does not fail the user's CI


def test_a_healthy_run_has_no_such_finding(runs_dir):
    model = nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradlens.Lens(model, opt, runs_dir=runs_dir) as lens:
        for _ in range(3):
            opt.zero_grad()
            F.cross_entropy(model(torch.randn(8, 4)), torch.randint(0, 3, (8,))).backward()
            opt.step()
    report = build_report(gradlens.open_run(lens.run_dir))
    assert not [f for f in report.findings if f.rule == "gradlens_health"]
