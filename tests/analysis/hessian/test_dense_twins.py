"""Every HVP engine and the public API against dense float64 Hessians (torch.func.hessian)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

import gradlens.analysis.hessian as gh
from gradlens.analysis.hessian import choose_hvp
from gradlens.analysis.objective import Objective, batches_from_data


def _dense(model, loss_fn, batches, train=False):
    """Dense Hessian of the size-weighted mean loss, in float64, built column by column by
    torch.autograd.functional.hessian (no vmap: torch.func's vmap gives wrong second
    derivatives through BatchNorm in train mode)."""
    model = model.train(train)
    names = [n for n, p in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    total = sum(x.shape[0] for x, _ in batches)

    def loss(flat):
        params, offset = {}, 0
        for n, s in zip(names, shapes):
            params[n] = flat[offset : offset + s.numel()].view(s)
            offset += s.numel()
        return sum(
            loss_fn(functional_call(model, params, (x,)), y) * (x.shape[0] / total)
            for x, y in batches
        )

    with sdpa_kernel(SDPBackend.MATH):  # the fused kernels have no second derivative
        h = torch.autograd.functional.hessian(loss, theta)
    return 0.5 * (h + h.T)


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 4)).double()


def _data(n=64, d=6, classes=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    return x, torch.randint(0, classes, (n,), generator=g)


class _CNN(nn.Module):
    def __init__(self, track=True):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4, track_running_stats=track)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(F.relu(self.bn(self.conv(x))).flatten(1))


class _Attention(nn.Module):
    """Self-attention through F.scaled_dot_product_attention and nn.MultiheadAttention."""

    def __init__(self, d=4, heads=2):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.mha = nn.MultiheadAttention(d, heads, batch_first=True)
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
        y = y + self.mha(y, y, y, need_weights=False)[0]
        return self.head(y.mean(1))


def _check_hvps(model, batches, mode="eval"):
    h = _dense(model, F.cross_entropy, batches, train=(mode == "train"))
    obj = Objective(model, batches_from_data(batches, F.cross_entropy), mode)
    g = torch.Generator().manual_seed(5)
    v = torch.randn(h.shape[0], generator=g, dtype=torch.float64)
    with obj.isolated():
        for method in ("double_backward", "forward_over_reverse", "finite_difference"):
            engine = choose_hvp(obj, method)
            tol = 1e-5 if method == "finite_difference" else 1e-10
            torch.testing.assert_close(engine(v), h @ v, rtol=tol, atol=tol * float(h.abs().max()))
    return h


@pytest.mark.parametrize("split", [1, 3], ids=["one-batch", "three-batches"])
def test_mlp_engines_match_dense(split):
    x, y = _data(60)
    batches = list(zip(x.tensor_split(split), y.tensor_split(split)))
    _check_hvps(_mlp(), batches)


def test_cnn_with_batchnorm_eval_and_train():
    torch.manual_seed(0)
    model = _CNN().double()
    model.bn.running_mean.uniform_(-0.5, 0.5)
    model.bn.running_var.uniform_(0.5, 2.0)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(16, 2, 4, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (16,), generator=g)
    _check_hvps(model, [(x, y)], "eval")
    stats = (model.bn.running_mean.clone(), model.bn.running_var.clone())
    torch.manual_seed(0)
    batch_stats = _CNN(track=False).double()  # train mode: batch statistics in the loss
    _check_hvps(batch_stats, [(x, y)], "train")
    assert torch.equal(stats[0], model.bn.running_mean)


def test_attention_models_work_and_match_dense():
    torch.manual_seed(0)
    model = _Attention().double()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 5, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (4,), generator=g)
    h = _dense(model, F.cross_entropy, [(x, y)])
    res = gh.hessian_eigenvalues(model, F.cross_entropy, (x, y), k=3, tol=1e-8)
    exact = torch.linalg.eigvalsh(h).flip(0)[:3]
    torch.testing.assert_close(res.eigenvalues, exact, rtol=1e-7, atol=1e-10)


def test_fused_attention_falls_back_to_the_math_backend(capsys):
    """float32 on CPU: SDPA's flash kernel has no double backward nor forward AD."""
    torch.manual_seed(0)
    model = _Attention()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 5, 4, generator=g)
    y = torch.randint(0, 3, (4,), generator=g)
    res = gh.hessian_eigenvalues(model, F.cross_entropy, (x, y), k=2, tol=1e-5)
    assert res.method in ("double_backward", "forward_over_reverse", "finite_difference")
    if res.method == "finite_difference":  # fastest, and only after passing its check
        assert res.selection["fd_check"]["passed"]
    assert "math attention backend" in capsys.readouterr().err
    h = _dense(model.double(), F.cross_entropy, [(x.double(), y)])
    exact = torch.linalg.eigvalsh(h).flip(0)[:2]
    assert ((res.eigenvalues - exact).abs() / exact).max() < 1e-4


@pytest.mark.parametrize("which", ["LA", "SA", "LM"])
def test_api_eigenvalues_to_requested_tolerance(which):
    model, (x, y) = _mlp(), _data()
    h = _dense(model, F.cross_entropy, [(x, y)])
    ev = torch.linalg.eigvalsh(h)
    order = {"LA": ev.flip(0), "SA": ev, "LM": ev[ev.abs().argsort(descending=True)]}[which]
    k = 4
    res = gh.hessian_eigenvalues(
        model, F.cross_entropy, (x, y), k=k, which=which, tol=1e-6, dtype=torch.float64
    )
    torch.testing.assert_close(res.eigenvalues, order[:k], rtol=1e-6, atol=1e-9)
    flat = torch.stack(
        [
            torch.cat([vec[n].reshape(-1) for n, _ in model.named_parameters()])
            for vec in res.eigenvectors
        ]
    )
    for value, vector in zip(res.eigenvalues, flat):
        assert float(torch.linalg.vector_norm(h @ vector - value * vector)) <= 1e-6 * abs(value)
    assert res.hvps <= 80


def test_lambda_min_from_the_same_krylov_space():
    model, (x, y) = _mlp(), _data()
    ev = torch.linalg.eigvalsh(_dense(model, F.cross_entropy, [(x, y)]))
    res = gh.hessian_eigenvalues(
        model, F.cross_entropy, (x, y), k=1, tol=1e-10, dtype=torch.float64, max_iter=200
    )
    # λmin is estimated from the LA run; its own residual bounds its error (Weyl)
    assert abs(res.lambda_min - float(ev[0])) <= res.lambda_min_residual + 1e-9


def test_trace_within_three_standard_errors():
    model, (x, y) = _mlp(), _data()
    exact = float(_dense(model, F.cross_entropy, [(x, y)]).trace())
    for estimator in ("hutch++", "hutchinson"):
        res = gh.hessian_trace(
            model, F.cross_entropy, (x, y), estimator=estimator, tol=1e-3, max_hvps=120, seed=4
        )
        assert abs(res.estimate - exact) <= 3 * res.stderr, (estimator, res, exact)


def test_density_integrates_to_one_with_first_moment_trace_over_n():
    model, (x, y) = _mlp(), _data()
    h = _dense(model, F.cross_entropy, [(x, y)])
    n = h.shape[0]
    density = gh.hessian_density(model, F.cross_entropy, (x, y), runs=8, steps=40, points=3000)
    dx = float(density.grid[1] - density.grid[0])
    assert float(density.density.sum()) * dx == pytest.approx(1.0, abs=1e-4)
    # each run's first moment is qᵀHq for a random unit q: mean tr/n, std ≈ sqrt(2/n)·rms(λ)
    spread = math.sqrt(2 * float((h @ h).trace()) / n) / math.sqrt(n) / math.sqrt(8)
    assert abs(density.first_moment - float(h.trace()) / n) <= 3 * spread


def test_api_leaves_the_model_untouched():
    model, (x, y) = _mlp(), _data()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    gh.hessian_eigenvalues(model, F.cross_entropy, (x, y), k=2, method="finite_difference")
    gh.hessian_trace(model, F.cross_entropy, (x, y), max_hvps=30)
    assert model.training and torch.equal(rng, torch.get_rng_state())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_loss_computed_by_the_model():
    class WithLoss(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = _mlp()

        def forward(self, x, y):
            return F.cross_entropy(self.net(x), y)

    model = WithLoss()
    x, y = _data()
    a = gh.hessian_eigenvalues(model, None, [(x, y)], k=2, tol=1e-8, dtype=torch.float64)
    b = gh.hessian_eigenvalues(
        model.net, F.cross_entropy, (x, y), k=2, tol=1e-8, dtype=torch.float64
    )
    torch.testing.assert_close(a.eigenvalues, b.eigenvalues)
