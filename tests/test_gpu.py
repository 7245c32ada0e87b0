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
