"""Softmax-collapse signals on crafted logits, the gradient–weight cosine against float64,
and the ghosts-of-softmax radius of a crafted logit derivative."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradlens.functional.softmax import (
    SOFTMAX_STATS,
    ghost_radius_from_derivative,
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


def test_ghost_radius_from_a_crafted_derivative() -> None:
    # per-sample spreads 2, 6 and 0.5 (a sequence of 3 × 2 positions): Δ_a = 6, ρ = π/6
    a = torch.tensor([[[1.0, -1.0, 0.0], [3.0, -3.0, 0.0]], [[0.5, 0.0, 0.25], [0.0, 0.0, 0.0]]])
    got = ghost_radius_from_derivative(a, 0.3)
    assert got["delta_a"] == 6.0 and got["step"] == pytest.approx(0.3)
    assert got["rho"] == pytest.approx(math.pi / 6, rel=1e-15)
    assert got["r"] == pytest.approx(0.3 * 6 / math.pi, rel=1e-15)
    flat = ghost_radius_from_derivative(torch.zeros(4, 3), 1.0)  # no spread: Δ_a floored
    assert flat["delta_a"] == 0.0 and flat["rho"] == pytest.approx(math.pi * 1e12)


def test_probability_targets() -> None:
    z, t = crafted()
    soft = F.one_hot(t, C).float()
    out = softmax_collapse(z, soft)
    assert out == softmax_collapse(z, t)  # one-hot probabilities: the same numbers


def test_log_probabilities_give_the_shift_invariant_stats_of_their_logits():
    """``F.nll_loss(F.log_softmax(z))``: saturation, gaps and accuracy are those of ``z``
    (exact counts on the crafted rows); a sample whose log-probability is exactly 0 has loss 0;
    log Z and the logit norm cannot be known from log-probabilities (NaN)."""
    z, t = crafted()
    from_logits = dict(zip(SOFTMAX_STATS, softmax_collapse_stats(z, t).tolist(), strict=True))
    log_p = F.log_softmax(z, dim=1)
    stats = softmax_collapse_stats(log_p, t, log_probs=True).tolist()
    got = dict(zip(SOFTMAX_STATS, stats, strict=True))
    for name in ("saturated_fraction", "accuracy", "num_samples"):
        assert got[name] == from_logits[name], name
    for name in ("max_logit_gap", "mean_logit_gap"):
        assert got[name] == pytest.approx(from_logits[name], rel=1e-6), name
    expected_zero = (F.nll_loss(log_p, t, reduction="none") == 0).float().mean().item()
    assert got["zero_loss_fraction"] == expected_zero > 0  # the saturated correct rows
    assert all(math.isnan(got[n]) for n in ("log_z_mean", "log_z_max", "logit_norm"))


def test_entries_masked_with_minus_infinity_are_not_in_the_norm() -> None:
    """SimCLR's NT-Xent masks the similarity diagonal with -inf before cross-entropy."""
    g = torch.Generator().manual_seed(0)
    sim = torch.randn(8, 8, generator=g) * 3
    masked = sim.masked_fill(torch.eye(8, dtype=torch.bool), -math.inf)
    target = (torch.arange(8) + 4) % 8
    out = softmax_collapse(masked, target)
    off = sim.double()[~torch.eye(8, dtype=torch.bool)].view(8, 7)
    assert out["logit_norm"] == pytest.approx(float(off.norm(dim=-1).mean()), rel=1e-6)
    assert out["log_z_mean"] == pytest.approx(float(torch.logsumexp(off, -1).mean()), rel=1e-6)
