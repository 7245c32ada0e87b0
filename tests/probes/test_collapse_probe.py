"""The collapse probe: exact collapse on a crafted simplex-ETF network, the pure function on
directly computed features, the classifier option, and a real Lens run read back."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradlens
from gradlens.analysis.objective import Batch, Objective, batches_from_data
from gradlens.functional.collapse import neural_collapse_metrics
from gradlens.probes import ProbeContext
from gradlens.probes.base import ProbeUnavailable
from gradlens.probes.collapse import CollapseProbe
from gradlens.store.schema import to_arrow

C, D = 4, 6


def _etf_network() -> nn.Sequential:
    """One-hot inputs → features exactly the rows of a simplex ETF (padded to D dims); the
    classifier's weight is that same ETF (self-dual) and its bias zero."""
    etf = math.sqrt(C / (C - 1)) * (torch.eye(C, dtype=torch.float64) - 1 / C)
    means = torch.zeros(C, D, dtype=torch.float64)
    means[:, :C] = etf
    model = nn.Sequential(nn.Linear(C, D, bias=False), nn.Linear(D, C)).double()
    with torch.no_grad():
        model[0].weight.copy_(means.T)
        model[1].weight.copy_(means)
        model[1].bias.zero_()
    return model


def _rows(probe: CollapseProbe, objective: Objective, step: int = 3) -> dict[str, float]:
    with objective.isolated():
        rows = probe.compute(ProbeContext(step, objective))["collapse"]
    to_arrow("collapse", rows)  # the rows fit the table's schema
    assert set(rows["step"]) == {step}
    return dict(zip(rows["metric"], rows["value"], strict=True))


def test_exact_collapse_of_a_simplex_etf_network():
    y = torch.arange(40) % C
    x = F.one_hot(y, C).double()
    batches = [(x[:24], y[:24]), (x[24:], y[24:])]  # two batches: streamed and merged
    objective = Objective(_etf_network(), batches_from_data(batches, F.cross_entropy))
    got = _rows(CollapseProbe(), objective)
    assert got["num_classes"] == C and got["num_samples"] == 40
    for metric in ("nc1", "cdnv", "nc2_equinorm", "nc2_equiangular", "nc2_max_angle"):
        assert got[metric] == pytest.approx(0.0, abs=1e-12), metric
    for metric in ("nc2_etf_distance", "nc3", "nc3_duality", "nc4"):
        assert got[metric] == pytest.approx(0.0, abs=1e-12), metric


def test_rows_equal_the_pure_function_on_direct_features():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Dropout(0.3), nn.ReLU(), nn.Linear(16, 3)
    ).double()
    g = torch.Generator().manual_seed(1)
    y = torch.arange(60) % 3
    x = 2 * torch.randn(3, 8, generator=g, dtype=torch.float64)[y]
    x = x + torch.randn(60, 8, generator=g, dtype=torch.float64)
    objective = Objective(model, batches_from_data((x, y), F.cross_entropy), "eval")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    got = _rows(CollapseProbe(classifier="4"), objective)
    assert model.training  # the probe's eval pass left the model's mode alone
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    model.eval()
    with torch.no_grad():
        features = model[:4](x)
    want = neural_collapse_metrics(features, y, model[4].weight, model[4].bias)
    want = {k: v for k, v in want.items() if not math.isnan(v)}
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_unavailable_without_class_labels():
    model = _etf_network()
    x = F.one_hot(torch.arange(8) % C, C).double()
    for labels in (None, torch.randn(8)):  # a loss without targets, a regression's
        objective = Objective(model, [Batch((x,), size=8, labels=labels)])
        with objective.isolated(), pytest.raises(ProbeUnavailable, match="class-index targets"):
            CollapseProbe().compute(ProbeContext(0, objective))


def test_classifier_with_the_classes_of_the_loss_logits():
    """The last nn.Linear is a 1-output head; then one with C outputs that the loss never saw:
    the classifier is the layer with as many outputs as the recorded logits."""
    model = nn.Sequential(_etf_network(), nn.Linear(C, 1).double())
    y = torch.arange(40) % C
    x = F.one_hot(y, C).double()
    objective = Objective(model, [Batch((x,), size=40, labels=y, classes=C)])
    with objective.isolated():
        got = CollapseProbe().compute(ProbeContext(0, objective))["collapse"]
    values = dict(zip(got["metric"], got["value"], strict=True))
    assert values["num_classes"] == C and values["nc1"] == pytest.approx(0.0, abs=1e-12)
    objective = Objective(model, [Batch((x,), size=40, labels=y, classes=7)])
    with objective.isolated(), pytest.raises(ProbeUnavailable, match=r"no nn\.Linear with 7"):
        CollapseProbe().compute(ProbeContext(0, objective))


def test_a_lens_run_writes_the_metrics_of_the_probe_batches(runs_dir):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    seen = []
    options = {"collapse": {"every": 5}}
    with gradlens.Lens(
        model, opt, runs_dir=runs_dir, probe_options=options, probe_batches=2
    ) as lens:
        for _ in range(10):
            x = torch.randn(30, 6, generator=g)
            y = torch.arange(30) % 3
            x[:, :3] += 2 * F.one_hot(y, 3)
            seen.append((x, y))
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    table = gradlens.open_run(lens.run_dir).table("collapse")
    assert sorted(set(table["step"])) == [4, 9]
    last = table[table.step == 9]
    got = dict(zip(last["metric"], last["value"], strict=True))
    want = gradlens.neural_collapse(model, seen[:2])  # the model after the last step
    want = {k: v for k, v in want.items() if not math.isnan(v)}
    assert got == pytest.approx(want, rel=1e-6, abs=1e-9)
