"""The hessian probe on regression losses: ``F.mse_loss`` (mean reduction) has no
forward-over-reverse HVP in torch.func ('ZeroTensors are immutable', pytorch#123996), so the
engine choice falls back to the other engines — the top eigenvalues still match a dense
float64 Hessian of the probe batches."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradlens
from gradlens.analysis.hessian import choose_hvp
from gradlens.analysis.objective import Objective, batches_from_data
from tests.analysis.hessian.test_dense_twins import _dense


def _regression(seed: int = 0) -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    g = torch.Generator().manual_seed(seed + 1)
    batches = []
    for _ in range(6):
        x = torch.randn(24, 4, generator=g, dtype=torch.float64)
        batches.append((x, x[:, :1].sin() + 0.1 * x[:, 1:2]))
    return model, batches


def test_auto_engine_skips_forward_over_reverse_for_mse_and_matches_dense():
    model, batches = _regression()
    objective = Objective(model, batches_from_data(batches[:2], F.mse_loss))
    h = _dense(model, F.mse_loss, batches[:2])
    v = torch.randn(h.shape[0], generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    messages: list[str] = []
    with objective.isolated():
        engine = choose_hvp(objective, "auto", log=messages.append)
        product = engine(v)
    assert "forward_over_reverse" not in engine.selection["seconds"]
    assert any("forward_over_reverse failed" in m for m in messages), messages
    tol = 1e-5 if engine.method == "finite_difference" else 1e-10
    torch.testing.assert_close(product, h @ v, rtol=tol, atol=tol * float(h.abs().max()))


@pytest.mark.parametrize("criterion", ["functional", "module"])
def test_hessian_probe_on_an_mse_regression_matches_dense(runs_dir, criterion):
    model, batches = _regression()
    module = nn.MSELoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    options = {"hessian": {"every": 6, "k": 2, "tol": 1e-8, "trace": False}}
    with gradlens.Lens(model, opt, runs_dir=runs_dir, probe_options=options) as lens:
        for x, y in batches:
            opt.zero_grad()
            loss = F.mse_loss(model(x), y) if criterion == "functional" else module(model(x), y)
            loss.backward()
            opt.step()
    run = gradlens.open_run(lens.run_dir)
    assert not run.meta.get("disabled"), run.meta.get("disabled")
    table = run.table("hessian")
    assert set(table["step"]) == {5}
    top = table[table.metric == "top_eigenvalue"].sort_values("index")["value"].to_numpy()
    # the probe ran after the last update, on the two recorded probe batches
    dense = torch.linalg.eigvalsh(_dense(model, F.mse_loss, batches[:2]))
    expected = dense.flip(0)[:2].numpy()
    assert top == pytest.approx(expected, rel=1e-6)
    engine = table[table.metric == "hvp_engine"]["layer"].tolist()
    assert engine and engine[0] != "forward_over_reverse"
