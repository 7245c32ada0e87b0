"""The landscape probe through a real Lens run: rows, schedule, and untouched training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradlens
from gradlens.analysis.objective import Objective, batches_from_data
from gradlens.probes import ProbeContext, make_probes
from gradlens.probes.landscape import LandscapeProbe

OPTIONS = {"every": 4, "at_end": True, "dims": 2, "steps": 5, "span": 0.5, "roughness": 2}


def _data(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(32, 6, generator=g)
    return x, (x[:, 0] > 0).long()


def _train(runs_dir, **lens_options):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.Dropout(0.3), nn.Linear(16, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    seen = []
    with gradlens.Lens(model, opt, runs_dir=runs_dir, **lens_options) as lens:
        for _ in range(10):
            x, y = _data(g)
            seen.append((x, y))
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    return model, lens, seen


def test_probe_writes_rows_and_training_is_bitwise_unchanged(runs_dir):
    plain, _, _ = _train(runs_dir)
    probed, lens, seen = _train(
        runs_dir, probes="cheap", probe_options={"landscape": OPTIONS}, probe_batches=2
    )
    for (name, a), b in zip(plain.state_dict().items(), probed.state_dict().values()):
        assert torch.equal(a, b), name

    table = gradlens.open_run(lens.run_dir).table("landscape")
    assert sorted(set(table["step"])) == [3, 7, 9]  # every 4th step, and at the end
    end = table[table.step == 9]
    assert set(end["slice"]) == {"filter-2d"}
    loss = end[end.metric == "loss"]
    assert len(loss) == 25 and len(end[end.metric == "accuracy"]) == 25
    assert sorted(set(loss["alpha"])) == pytest.approx([-0.5, -0.25, 0.0, 0.25, 0.5])
    summaries = end[end.alpha.isna()]
    assert set(summaries["metric"]) == {
        "roughness",
        "nonfinite",
        "check_error",
        "slope_alpha",
        "slope_beta",
        "curvature_alpha",
        "curvature_beta",
    }
    assert np.isfinite(summaries["value"]).all()
    check = float(summaries[summaries.metric == "check_error"]["value"].iloc[0])
    assert 0 <= check <= 1e-3  # the slice's own values against the float32 loop

    # the centre is the trained model's eval-mode loss on the two recorded batches
    objective = Objective(probed, batches_from_data(seen[:2], F.cross_entropy), "eval")
    with objective.isolated(), torch.no_grad():
        want = objective.loss().item()
    centre = loss[(loss.alpha == 0.0) & (loss.beta == 0.0)]["value"].item()
    assert centre == pytest.approx(want, rel=1e-6)


def test_options_are_checked_and_listed():
    (probe,) = [
        p for p in make_probes("cheap", {"landscape": {"dims": 1}}) if p.name == "landscape"
    ]
    assert (probe.dims, probe.steps, probe.every, probe.preset) == (1, 21, 1000, "full")
    assert "landscape" in [p.name for p in make_probes("full")]
    assert LandscapeProbe.options()["directions"] == "filter"
    for bad in ({"dims": 3}, {"steps": 4}, {"directions": "line"}, {"dtype": "float7"}):
        with pytest.raises(ValueError, match="landscape"):
            LandscapeProbe(**bad)


def test_update_direction_from_the_context():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    update = {n: 0.05 * torch.ones_like(p) for n, p in model.named_parameters()}
    objective = Objective(model, batches_from_data((x, y), F.cross_entropy), "eval")
    probe = LandscapeProbe(dims=1, steps=3, span=1.0, directions="update", roughness=0)
    with objective.isolated():
        rows = probe.compute(ProbeContext(5, objective, update_fn=lambda: update))["landscape"]
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.add_(update[n])
        want = F.cross_entropy(model(x), y).item()
    at_one = [
        v for m, a, v in zip(rows["metric"], rows["alpha"], rows["value"]) if m == "loss" and a == 1
    ]
    assert at_one == [pytest.approx(want, rel=1e-6)]
    assert set(rows["slice"]) == {"update-1d"} and set(rows["step"]) == {5}
    with pytest.raises(ValueError, match="update="), objective.isolated():
        probe.compute(ProbeContext(5, objective))


def test_hessian_direction_curvature_is_the_top_eigenvalue():
    hessian = pytest.importorskip("gradlens.analysis.hessian")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    top = hessian.hessian_eigenvalues(model, F.cross_entropy, (x, y), k=1, tol=1e-6)
    objective = Objective(model, batches_from_data((x, y), F.cross_entropy), "eval")
    probe = LandscapeProbe(dims=1, steps=3, span=0.02, directions="hessian", roughness=0)
    with objective.isolated():
        rows = probe.compute(ProbeContext(0, objective))["landscape"]
    curvature = rows["value"][rows["metric"].index("curvature_alpha")]
    assert set(rows["slice"]) == {"hessian-1d"}
    assert curvature == pytest.approx(float(top.eigenvalues[0]), rel=1e-2)


def test_update_direction_in_a_lens_run_steps_back_to_the_previous_weights(runs_dir):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.Linear(16, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    options = {"every": 5, "dims": 1, "steps": 3, "directions": "update", "roughness": 0}
    seen, before = [], None
    with gradlens.Lens(model, opt, runs_dir=runs_dir, probe_options={"landscape": options}) as lens:
        for step in range(5):
            x, y = _data(g)
            seen.append((x, y))
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            if step == 4:  # the probe runs after this step: α = -1 is the model right here
                before = {k: v.clone() for k, v in model.state_dict().items()}
            opt.step()
    loss = gradlens.open_run(lens.run_dir).table("landscape")
    loss = loss[loss.metric == "loss"].sort_values("alpha")
    assert set(loss["slice"]) == {"update-1d"} and loss["alpha"].tolist() == [-1.0, 0.0, 1.0]
    model.load_state_dict(before)
    objective = Objective(model, batches_from_data(seen[:2], F.cross_entropy), "eval")
    with objective.isolated(), torch.no_grad():
        want = objective.loss().item()
    assert loss["value"].iloc[0] == pytest.approx(want, rel=1e-5)
