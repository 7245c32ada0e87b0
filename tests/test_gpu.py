"""CUDA paths (asynchronous copies, events, device buffers). Skipped without a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradlens
import gradlens.analysis.hessian as gh

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def test_capture_on_cuda_matches_per_tensor_norms(runs_dir):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 5)).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(128, 16, device="cuda"), torch.randint(0, 5, (128,), device="cuda")
    expected = []
    with gradlens.Lens(model, opt, runs_dir=runs_dir, every=3) as lens:
        for _ in range(7):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            expected.append([p.grad.double().norm().item() for p in model.parameters()])
            opt.step()
    run = gradlens.open_run(lens.run_dir)
    names = [n for n, _ in model.named_parameters()]
    got = run.table("layers", filters=[("metric", "==", "grad_norm")])
    got = got.pivot(index="step", columns="layer", values="value")[names].to_numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert "cuda" in run.meta["device"]


def test_hessian_on_cuda_matches_cpu_float64():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 3))
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    reference = gh.hessian_eigenvalues(
        model.double(), F.cross_entropy, (x.double(), y), k=3, tol=1e-10, dtype=torch.float64
    )
    model = model.float().cuda()
    got = gh.hessian_eigenvalues(model, F.cross_entropy, (x.cuda(), y.cuda()), k=3, tol=1e-4)
    torch.testing.assert_close(got.eigenvalues.cpu(), reference.eigenvalues, rtol=1e-3, atol=0)


def _graphed_run(runs_dir, name, set_to_none, move_at):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 5)).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(128, 16, device="cuda"), torch.randint(0, 5, (128,), device="cuda")
    expected = []
    with gradlens.Lens(model, opt, runs_dir=runs_dir, name=name, every=5) as lens:
        for step in range(30):
            opt.zero_grad(set_to_none=set_to_none)
            F.cross_entropy(model(x[step % 7 :]), y[step % 7 :]).backward()
            if step in move_at:  # new gradient tensors: the graph's addresses are stale
                for p in model.parameters():
                    p.grad = p.grad.clone()
            expected.append([p.grad.double().norm().item() for p in model.parameters()])
            opt.step()
    names = [n for n, _ in model.named_parameters()]
    table = gradlens.open_run(lens.run_dir).table("layers", filters=[("metric", "==", "grad_norm")])
    return table.pivot(index="step", columns="layer", values="value")[names].to_numpy(), expected


@pytest.mark.parametrize("set_to_none", [False, True])
def test_cuda_graph_replays_record_the_eager_norms(runs_dir, monkeypatch, set_to_none):
    """GRADLENS_CUDA_GRAPHS=1: the same kernels replayed, so the same bits; gradients moved to
    new tensors mid-run are read where they are (eager, then a new capture)."""
    import gradlens.capture.norms as norms_module
    from gradlens.capture.replay import NormReplay

    move_at = {12, 13, 20}
    eager, expected = _graphed_run(runs_dir, "eager", set_to_none, move_at)
    made = []

    def replay(plan):
        made.append(NormReplay(plan))
        return made[-1]

    monkeypatch.setenv("GRADLENS_CUDA_GRAPHS", "1")
    monkeypatch.setattr(norms_module, "NormReplay", replay)
    graphed, _ = _graphed_run(runs_dir, "graphed", set_to_none, move_at)
    np.testing.assert_array_equal(graphed, eager)
    np.testing.assert_allclose(graphed, expected, rtol=1e-5)
    assert len(made) == 1 and not made[0].broken
    if not set_to_none:
        assert made[0].captures >= 2 and made[0].replays >= 12  # re-captured after each move
    print(f"set_to_none={set_to_none}: {made[0].captures} captures, {made[0].replays} replays")
