"""The ghost probe (``gradlens.probes.softmax``): the softmax radius along the last update,
against an explicit Jacobian on a crafted model, skipped without an update, and in a Lens run."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import jacrev

import gradlens
from gradlens.analysis.objective import Objective, batches_from_data
from gradlens.probes import ProbeContext
from gradlens.probes.softmax import GhostProbe
from gradlens.store.schema import to_arrow


def _explicit_delta_a(model: nn.Module, x: torch.Tensor, update: dict[str, torch.Tensor]) -> float:
    """max over samples of the spread of J·v̂, with the Jacobian of the logits built whole."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    jac = jacrev(lambda p: torch.func.functional_call(model, p, (x,)))(params)
    step = math.sqrt(sum(float((u.double() ** 2).sum()) for u in update.values()))
    a = sum(
        (jac[n].reshape(*jac[n].shape[:2], -1).double() @ (u.double().reshape(-1) / step))
        for n, u in update.items()
    )
    return float((a.amax(-1) - a.amin(-1)).max())


def test_radius_along_the_update_against_an_explicit_jacobian():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 4)).double()
    x = torch.randn(9, 5, dtype=torch.float64)
    y = torch.arange(9) % 4
    update = {"2.weight": 0.01 * torch.randn(4, 7, dtype=torch.float64)}
    update["0.bias"] = 0.02 * torch.ones(7, dtype=torch.float64)
    objective = Objective(model, batches_from_data((x, y), F.cross_entropy))
    with objective.isolated():
        rows = GhostProbe().compute(ProbeContext(6, objective, update_fn=lambda: update))
    table = rows["softmax"]
    to_arrow("softmax", table)
    got = dict(zip(table["metric"], table["value"], strict=True))
    assert set(table["step"]) == {6} and set(table["layer"]) == {""}
    delta = _explicit_delta_a(model, x, update)
    step = math.sqrt(sum(float((u**2).sum()) for u in update.values()))
    assert got["ghost_delta_a"] == pytest.approx(delta, rel=1e-10)
    assert got["ghost_rho"] == pytest.approx(math.pi / delta, rel=1e-10)
    assert got["ghost_r"] == pytest.approx(step * delta / math.pi, rel=1e-10)


def test_a_crafted_logit_shift_has_an_exact_radius():
    """logits = W x with the update ΔW = t·e₀·1ᵀ: a = ∂z/∂W·v̂ moves class 0 only, by
    Σ_j x_j/‖1‖ per sample, so Δ_a = max_i |Σ_j x_ij|/√d and ρ = π/Δ_a."""
    d, c = 3, 5
    model = nn.Linear(d, c, bias=False).double()
    x = torch.tensor([[1.0, 2.0, 0.0], [0.5, -0.5, 3.0]], dtype=torch.float64)
    direction = torch.zeros(c, d, dtype=torch.float64)
    direction[0] = 0.1
    objective = Objective(model, batches_from_data((x, torch.zeros(2).long()), F.cross_entropy))
    with objective.isolated():
        table = GhostProbe().compute(
            ProbeContext(0, objective, update_fn=lambda: {"weight": direction})
        )["softmax"]
    got = dict(zip(table["metric"], table["value"], strict=True))
    assert got["ghost_delta_a"] == pytest.approx(3.0 / math.sqrt(d), rel=1e-14)
    assert got["ghost_r"] == pytest.approx(0.1 * math.sqrt(d) * 3.0 / math.sqrt(d) / math.pi)


def test_skipped_without_an_update():
    model = nn.Linear(3, 2)
    objective = Objective(model, batches_from_data((torch.ones(2, 3), torch.zeros(2).long()), None))
    with objective.isolated():
        assert GhostProbe().compute(ProbeContext(0, objective)) == {}


def test_a_lens_run_writes_the_radius_of_each_update(runs_dir):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    g = torch.Generator().manual_seed(1)
    options = {"ghost": {"every": 3}}
    with gradlens.Lens(
        model, opt, runs_dir=runs_dir, probe_options=options, probe_batches=1
    ) as lens:
        for _ in range(6):
            x = torch.randn(16, 6, generator=g)
            opt.zero_grad()
            F.cross_entropy(model(x), (x[:, 0] > 0).long()).backward()
            opt.step()
    table = gradlens.open_run(lens.run_dir).table("softmax")
    ghost = table[table.metric.str.startswith("ghost_")]
    assert sorted(set(ghost["step"])) == [2, 5]
    for _, rows in ghost.groupby("step"):
        got = dict(zip(rows["metric"], rows["value"], strict=True))
        assert got["ghost_rho"] > 0 and got["ghost_delta_a"] > 0
        assert got["ghost_rho"] * got["ghost_delta_a"] == pytest.approx(math.pi, rel=1e-9)
        assert got["ghost_r"] > 0


@pytest.mark.parametrize("loss", ["smooth_l1_loss", "mse_loss"])
def test_unavailable_when_the_loss_is_no_softmax_cross_entropy(runs_dir, loss):
    """A regression (or a DQN's Huber loss on Q-values) has no softmax: the radius of its
    outputs would be a number about nothing. Said once, listed in meta, no rows."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x, y = torch.randn(32, 4), torch.randn(32, 3)
    with gradlens.Lens(runs_dir=runs_dir, probe_options={"ghost": {"every": 2}}) as lens:
        for _ in range(4):
            opt.zero_grad()
            getattr(F, loss)(model(x), y).backward()
            opt.step()
    run = gradlens.open_run(lens.run_dir)
    assert run.meta["unavailable"]["probe ghost"].startswith(f"the training loss is F.{loss}")
    assert not run.table("softmax").metric.str.startswith("ghost_").any()
