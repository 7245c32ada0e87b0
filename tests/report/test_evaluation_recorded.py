"""The evaluation section and the overfitting rule on a run gradlens recorded itself: a small
MLP memorising random labels (its held-out loss climbs while the training loss falls).

Needs torch (skipped where the report's tests run without it, .ci/floors)."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import gradlens  # noqa: E402
from gradlens.report import build_report, render_json  # noqa: E402
from gradlens.report.render_json import schema  # noqa: E402

EPOCHS = 15
VAL = 256


def _random_labels(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 16, generator=g), torch.randint(0, 2, (n,), generator=g))


def _memorise() -> list[tuple[int, float]]:
    """Train on 64 random labels; after each epoch the held-out loss, averaged by the script."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 128), nn.ReLU(), nn.Linear(128, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    order = torch.Generator().manual_seed(2)
    train = DataLoader(_random_labels(64, 1), batch_size=16, shuffle=True, generator=order)
    val = DataLoader(_random_labels(VAL, 3), batch_size=64)
    history, steps = [], 0
    for _ in range(EPOCHS):
        model.train()
        for x, y in train:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            steps += 1
        model.eval()
        total = 0.0
        with torch.no_grad():
            for x, y in val:
                total += F.cross_entropy(model(x), y, reduction="sum").item()
        history.append((steps - 1, total / VAL))
    return history


def test_a_memorising_run_is_reported_as_overfitting(runs_dir):
    with gradlens.Lens(runs_dir=runs_dir, name="memorise") as lens:
        history = _memorise()
    report = build_report(gradlens.open_run(lens.run_dir))
    (loader,) = report.evaluation["loaders"]
    assert [g["step"] for g in loader["gap"]] == [step for step, _ in history]
    np.testing.assert_allclose(
        [g["eval_loss"] for g in loader["gap"]], [loss for _, loss in history], rtol=1e-5
    )
    best = min(range(EPOCHS), key=lambda i: history[i][1])
    assert loader["best_loss"] == pytest.approx(history[best][1], rel=1e-5)
    assert loader["samples"] == VAL and 0 <= loader["last_accuracy"] <= 1
    (finding,) = [f for f in report.findings if f.rule == "overfitting"]
    assert (finding.step_start, finding.step_end) == (history[best][0], history[-1][0])
    assert loader["gap"][-1]["gap"] > loader["gap"][0]["gap"]  # the gap widened
    jsonschema.validate(json.loads(render_json(report)), schema())
