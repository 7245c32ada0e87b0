"""``gradlens.analysis.softmax.ghost_radius``: the ghosts-of-softmax radius of a model along a
direction, against an explicit Jacobian and finite differences."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gradlens.analysis.softmax import NoLogits, ghost_radius


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


class _LossFirst(nn.Module):
    """Returns ``(loss, logits)``: the order of Hugging Face's tuples with labels."""

    def __init__(self, inner: nn.Module, lone_loss: bool = False) -> None:
        super().__init__()
        self.inner, self.lone_loss = inner, lone_loss

    def forward(self, x: torch.Tensor) -> object:
        logits = self.inner(x)
        loss = logits.square().mean()
        return loss if self.lone_loss else (loss, logits)


def test_ghost_radius_takes_the_logits_not_a_loss_before_them() -> None:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    x = torch.randn(6, 4, dtype=torch.float64)
    direction = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    inner = {f"inner.{n}": v for n, v in direction.items()}
    got = ghost_radius(_LossFirst(model), x, inner)
    assert got["delta_a"] == pytest.approx(_explicit_radius(model, x, direction)[0], rel=1e-10)
    with pytest.raises(NoLogits, match="a scalar"):
        ghost_radius(_LossFirst(model, lone_loss=True), x, inner)


class _LastPosition(nn.Module):
    """``inner`` followed by taking the last position (the oracle for ``output_fn``)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)[:, -1]


def _weight_normed() -> nn.Module:
    from torch.nn.utils.parametrizations import weight_norm

    torch.manual_seed(3)
    return nn.Sequential(weight_norm(nn.Linear(5, 7)), nn.Tanh(), nn.Linear(7, 4)).double()


def test_double_backward_jvp_equals_forward_ad():
    from torch.func import functional_call, jvp

    from gradlens.analysis.softmax import jvp_by_double_backward

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 16, 4)
    ).double()
    x = torch.randn(6, 2, 4, 4, dtype=torch.float64)
    primals = {n: p.detach() for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(1)
    tangents = {n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in primals.items()}
    del tangents["0.bias"]  # a parameter held fixed
    fixed = {n: p for n, p in primals.items() if n not in tangents}

    def fn(params):
        return functional_call(model, {**fixed, **params}, (x,))

    moving = {n: primals[n] for n in tangents}
    want = jvp(fn, (moving,), (tangents,))[1]
    got = jvp_by_double_backward(fn, moving, tangents)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_ghost_radius_without_forward_ad_matches_finite_differences():
    """weight_norm has no forward-AD formula: the double-backward JVP gives the radius, equal
    to a central finite difference of the logits in float64."""
    from torch.func import functional_call, jvp

    from gradlens.functional.softmax import ghost_radius_from_derivative

    model = _weight_normed().eval()
    x = torch.randn(9, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    params = {n: p.detach() for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(4)
    direction = {
        n: 0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in params.items()
    }
    with pytest.raises(NotImplementedError, match="forward AD"):  # why the fallback exists
        jvp(lambda p: functional_call(model, p, (x,)), (params,), (direction,))
    got = ghost_radius(model, x, direction)
    step = math.sqrt(sum(float((t**2).sum()) for t in direction.values()))
    eps = 1e-6

    def at(sign: float) -> torch.Tensor:
        moved = {n: params[n] + sign * eps * direction[n] / step for n in params}
        return functional_call(model, moved, (x,)).detach()

    derivative = (at(1.0) - at(-1.0)) / (2 * eps)
    want = ghost_radius_from_derivative(derivative, torch.tensor(step, dtype=torch.float64))
    assert got["delta_a"] == pytest.approx(want["delta_a"], rel=1e-7)
    assert got["r"] == pytest.approx(want["r"], rel=1e-7)
