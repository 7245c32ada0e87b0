"""Softmax-collapse signals on crafted logits, the gradient–weight cosine against float64,
and the ghosts-of-softmax radius against an explicit Jacobian and finite differences."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradlens.functional.softmax import (
    SOFTMAX_STATS,
    ghost_radius,
    grad_weight_cosine,
    saturation_gap,
    softmax_collapse,
    softmax_collapse_stats,
)

C = 10


def crafted(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """16 rows of 10 logits: 5 with top gap 40 (saturated in every dtype), 4 with gap 12
    (saturated in float16 and bfloat16, not float32), 7 with gap 3 (never). Targets: the
    argmax for 3 of the gap-40 rows, another class for the other two, the argmax elsewhere.
    All values are small integers or exact halves, so every dtype holds them exactly."""
    g = torch.Generator().manual_seed(seed)
    rows, targets = [], []
    for i, gap in enumerate([40] * 5 + [12] * 4 + [3] * 7):
        others = -gap - torch.randint(0, 7, (C,), generator=g).float() / 2  # ≤ top − gap
        top = int(torch.randint(0, C, (1,), generator=g))
        others[top] = 0.0
        others[(top + 1) % C] = -float(gap)  # exactly the gap for the runner-up
        rows.append(others + 5.0)
        targets.append((top + 1) % C if i in (3, 4) else top)
    order = torch.randperm(16, generator=g)
    return torch.stack(rows)[order], torch.tensor(targets)[order]


def stat(vector: torch.Tensor, name: str) -> float:
    return float(vector[SOFTMAX_STATS.index(name)])


@pytest.mark.parametrize(
    ("dtype", "saturated"),
    [
        (torch.float32, 5 / 16),
        (torch.float16, 9 / 16),
        (torch.bfloat16, 9 / 16),
        (torch.float64, 5 / 16),
    ],
)
def test_saturated_fraction_is_exact_in_the_logits_dtype(
    dtype: torch.dtype, saturated: float
) -> None:
    z, t = crafted()
    stats = softmax_collapse_stats(z.to(dtype), t)
    assert stats.dtype == torch.float32 and stats.shape == (len(SOFTMAX_STATS),)
    assert stat(stats, "saturated_fraction") == saturated
    assert stat(stats, "num_samples") == 16


def test_zero_loss_fraction() -> None:
    z, t = crafted()
    # float32: zero loss exactly when saturated and the target is the argmax (3 rows).
    assert stat(softmax_collapse_stats(z, t), "zero_loss_fraction") == 3 / 16
    # float16: whatever F.cross_entropy computes in float16, row by row.
    z16 = z.half()
    expected = (F.cross_entropy(z16, t, reduction="none") == 0).float().mean().item()
    assert stat(softmax_collapse_stats(z16, t), "zero_loss_fraction") == expected
    assert expected >= 3 / 16


def test_saturation_threshold_two_classes() -> None:
    """C = 2: ``1 + e^{−gap}`` rounds to 1 in float32 iff gap > ln 2^24 ≈ 16.64."""
    threshold = saturation_gap(torch.float32, 2)
    assert threshold == pytest.approx(24 * math.log(2))
    z = torch.tensor([[threshold + 0.5, 0.0], [threshold - 0.5, 0.0]])
    assert softmax_collapse(z)["saturated_fraction"] == 0.5
    assert saturation_gap(torch.float16, 10) == pytest.approx(math.log(9 * 2**11))


def test_other_statistics_against_float64() -> None:
    z, t = crafted()
    out = softmax_collapse(z, t)
    z64 = z.double()
    top2 = z64.topk(2).values
    log_z = torch.logsumexp(z64, -1)
    assert out["max_logit_gap"] == 40.0
    assert out["mean_logit_gap"] == pytest.approx(float((top2[:, 0] - top2[:, 1]).mean()))
    assert out["log_z_mean"] == pytest.approx(float(log_z.mean()), rel=1e-6)
    assert out["log_z_max"] == pytest.approx(float(log_z.max()), rel=1e-6)
    assert out["logit_norm"] == pytest.approx(float(z64.norm(dim=-1).mean()), rel=1e-6)
    assert out["accuracy"] == 14 / 16


def test_sequence_logits_and_ignore_index() -> None:
    z, t = crafted()
    z3, t3 = z.reshape(2, 8, C), t.reshape(2, 8).clone()
    flat = softmax_collapse(z3, t3)
    assert flat == softmax_collapse(z, t)
    t3[0, :4] = -100  # ignored rows drop out of every statistic
    keep = t3.reshape(-1) != -100
    assert softmax_collapse(z3, t3) == pytest.approx(softmax_collapse(z[keep], t[keep]))
    assert softmax_collapse(z3, t3)["num_samples"] == 12


def test_without_targets() -> None:
    z, _ = crafted()
    out = softmax_collapse(z)
    assert "zero_loss_fraction" not in out and "accuracy" not in out
    assert out["saturated_fraction"] == 5 / 16
    vector = softmax_collapse_stats(z)
    assert math.isnan(stat(vector, "zero_loss_fraction")) and math.isnan(stat(vector, "accuracy"))


def _forbid_host_syncs(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("host synchronisation on the hot path")

    for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)


def test_hot_path_is_sync_free_and_leaves_the_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    layer = nn.Linear(4, C)
    x, t = torch.randn(8, 4), torch.randint(0, C, (8,))
    logits = layer(x)
    before = logits.detach().clone()
    _forbid_host_syncs(monkeypatch)
    stats = softmax_collapse_stats(logits, t)
    grad_weight_cosine(list(layer.parameters()), [torch.randn(C, 4), None], include_global=True)
    monkeypatch.undo()
    assert not stats.requires_grad
    assert torch.equal(logits.detach(), before)
    F.cross_entropy(logits, t).backward()  # the training graph still works
    assert layer.weight.grad is not None


def test_grad_weight_cosine_against_float64() -> None:
    g = torch.Generator().manual_seed(0)
    shapes = [(7, 5), (5,), (3, 4, 2), (1000,)]
    params = [torch.randn(s, generator=g) for s in shapes]
    grads = [torch.randn(s, generator=g) + 0.3 * p for s, p in zip(shapes, params, strict=True)]
    got = grad_weight_cosine(params, grads, include_global=True)

    def cos(a: torch.Tensor, b: torch.Tensor) -> float:
        a, b = a.double().flatten(), b.double().flatten()
        return float(a @ b / (a.norm() * b.norm()))

    want = [cos(p, q) for p, q in zip(params, grads, strict=True)]
    want.append(
        cos(torch.cat([p.flatten() for p in params]), torch.cat([q.flatten() for q in grads]))
    )
    assert got.dtype == torch.float32
    assert got.tolist() == pytest.approx(want, abs=1e-6)


def test_grad_weight_cosine_edge_cases() -> None:
    w = torch.randn(6)
    out = grad_weight_cosine(
        [w, w, torch.zeros(3), w.bfloat16()], [-2 * w, None, torch.ones(3), w.bfloat16()]
    )
    assert out.tolist() == pytest.approx([-1.0, 0.0, 0.0, 1.0], abs=1e-6)
    with pytest.raises(ValueError):
        grad_weight_cosine([w], [])


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(5, 7)
        self.out = nn.Linear(7, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.hidden(x)))


def _explicit_radius(model: nn.Module, x: torch.Tensor, direction: dict[str, torch.Tensor]):
    """a = J v with the explicit Jacobian of the logits w.r.t. the named parameters."""
    names = list(direction)
    base = {n: p.detach() for n, p in model.named_parameters()}
    sizes = [base[n].numel() for n in names]
    flat0 = torch.cat([base[n].flatten() for n in names])

    def logits(flat: torch.Tensor) -> torch.Tensor:
        params = dict(base)
        for n, chunk in zip(names, flat.split(sizes), strict=True):
            params[n] = chunk.view_as(base[n])
        return torch.func.functional_call(model, params, (x,))

    jac = torch.autograd.functional.jacobian(logits, flat0)  # (..., V, P)
    v = torch.cat([direction[n].flatten() for n in names])
    step = v.norm()
    a = (jac @ (v / step)).reshape(-1, jac.shape[-2])
    delta = float((a.amax(-1) - a.amin(-1)).max())
    # central finite differences of the logits along v/‖v‖
    eps = 1e-6
    fd = ((logits(flat0 + eps * v / step) - logits(flat0 - eps * v / step)) / (2 * eps)).reshape(
        a.shape
    )
    return delta, float(step), fd


@pytest.mark.parametrize("subset", [False, True])
def test_ghost_radius_against_explicit_jacobian(subset: bool) -> None:
    torch.manual_seed(0)
    model = _Tiny().double()
    x = torch.randn(6, 5, dtype=torch.float64)
    named = dict(model.named_parameters())
    keys = ["out.weight", "out.bias"] if subset else list(named)
    direction = {n: 0.01 * torch.randn_like(named[n]) for n in keys}
    got = ghost_radius(model, x, direction)
    delta, step, fd = _explicit_radius(model, x, direction)
    assert got["delta_a"] == pytest.approx(delta, rel=1e-10)
    assert got["step"] == pytest.approx(step, rel=1e-12)
    assert got["rho"] == pytest.approx(math.pi / delta, rel=1e-10)
    assert got["r"] == pytest.approx(step * delta / math.pi, rel=1e-10)
    fd_delta = float((fd.amax(-1) - fd.amin(-1)).max())
    assert got["delta_a"] == pytest.approx(fd_delta, rel=1e-6)


def test_ghost_radius_sequence_model_and_output_fn() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Embedding(11, 6), nn.Linear(6, 11)).double()
    idx = torch.randint(0, 11, (2, 5))
    direction = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    got = ghost_radius(model, idx, direction)
    delta, _, _ = _explicit_radius(model, idx, direction)
    assert got["delta_a"] == pytest.approx(delta, rel=1e-10)
    last = ghost_radius(model, idx, direction, output_fn=lambda out: out[:, -1])
    wrapped = _LastPosition(model)
    inner = {f"inner.{n}": v for n, v in direction.items()}
    assert last["delta_a"] == pytest.approx(_explicit_radius(wrapped, idx, inner)[0], rel=1e-10)
    assert last["delta_a"] <= got["delta_a"]
    with pytest.raises(ValueError, match="unknown"):
        ghost_radius(model, idx, {"nope": torch.zeros(1)})


class _LastPosition(nn.Module):
    """``inner`` followed by taking the last position (the oracle for ``output_fn``)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)[:, -1]


def test_probability_targets() -> None:
    z, t = crafted()
    soft = F.one_hot(t, C).float()
    out = softmax_collapse(z, soft)
    assert out == softmax_collapse(z, t)  # one-hot probabilities: the same numbers
