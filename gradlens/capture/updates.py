"""Δθ of an optimizer step read off the optimizer's own state after it: no copy of the model.

``torch.optim.SGD``, ``Adam`` and ``AdamW`` leave enough state behind to rebuild the update
they just applied. With σ = −1 under ``maximize`` (else 1), θ the parameter after the step,
``t`` the tensor's own step count and ``c = lr·wd / (1 − lr·wd)``:

- SGD with momentum: Δθ = −lr·buf (weight decay and dampening are inside ``buf``);
- SGD with Nesterov momentum: Δθ = −(1 + c)·lr·(σg + m·buf) − c·θ;
- SGD without momentum: Δθ = −(1 + c)·lr·σg − c·θ (θ = θ_before·(1 − lr·wd) − lr·x gives
  the decay lr·wd·θ_before = c·(θ + lr·x): the decay written with θ after the step);
- Adam/AdamW: u = −lr/(1 − β₁ᵗ) · m/(√v/√(1 − β₂ᵗ) + ε), v the running maximum under
  ``amsgrad``; θ = θ_before·k + u with k = 1 − lr·wd for AdamW's decoupled decay (Adam's L2
  decay is inside m and v: k = 1), so θ_before = (θ − u)/k.

The last step turns the computed update into the change the parameters really saw: θ_before
is rebuilt in θ's dtype (undoing the optimizer's roundings, which usually lands on it exactly)
and Δθ = θ − θ_before; this matters for small tensors whose update is a few ulps of θ. Left:
the optimizer rounds with a fused multiply-add, so ≈0.5 % of entries can be one ulp of θ off.
A fixed handful of ``_foreach`` ops for all tensors together, whatever the number of groups
(per-tensor hyperparameters travel as scalar lists), one temporary the size of the tensors
(the returned Δθ), no host sync: step counts on the host are read (one float per tensor) as
torch's own non-capturable step reads them; on an accelerator (fused) the bias corrections are
device scalars.

Unsupported (:func:`group_indices`/:func:`supported` say so; the caller copies θ instead):
subclasses and other optimizers, ``capturable``/``differentiable``, sparse gradients, a learning
rate or beta held in an accelerator tensor, parameters other than float32/float64 (in bf16 the
rounding is the signal), parameters the optimizer does not own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["group_indices", "optimizer_update", "supported"]

_KINDS = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)
_DTYPES = (torch.float32, torch.float64)


def group_indices(optimizer: Any, params: Sequence[Tensor]) -> list[int] | None:
    """The index of each of ``params``' param group when Δθ can be read off ``optimizer``,
    else None. (Indices, not the groups: ``load_state_dict`` replaces the group dicts.)"""
    if type(optimizer) not in _KINDS:
        return None
    if any(p.dtype not in _DTYPES for p in params):
        return None
    by_id = {id(p): i for i, g in enumerate(optimizer.param_groups) for p in g["params"]}
    indices = [by_id.get(id(p)) for p in params]
    if any(i is None for i in indices):
        return None
    return indices  # type: ignore[return-value]


def supported(optimizer: Any) -> bool:
    """Whether every group's flags and hyperparameters are ones the formulas cover."""
    adam = isinstance(optimizer, torch.optim.Adam)
    for group in optimizer.param_groups:
        if group.get("differentiable") or group.get("capturable"):
            return False
        values = [group["lr"], group["weight_decay"]]
        values += list(group["betas"]) if adam else [group["momentum"], group["dampening"]]
        if not all(_host_number(v) for v in values):
            return False
        decoupled = not adam or group.get("decoupled_weight_decay", False)
        decay = float(group["lr"]) * float(group["weight_decay"])
        if decoupled and decay >= 1.0:
            return False
    return True


def optimizer_update(
    optimizer: Any, params: Sequence[Tensor], indices: Sequence[int]
) -> list[Tensor] | None:
    """Δθ of the step ``optimizer`` just applied to ``params`` (each of which had a gradient);
    ``indices`` (their param groups) from :func:`group_indices`. None when the state does not
    allow it."""
    if not params:
        return []
    if any(p.grad is None or p.grad.is_sparse for p in params):
        return None
    every = optimizer.param_groups
    groups = [every[i] for i in indices]
    if isinstance(optimizer, torch.optim.Adam):
        delta = _adam(optimizer, params, groups)
    else:
        delta = _sgd(optimizer, params, groups)
    return delta


# -- SGD -----------------------------------------------------------------------------------------


def _sgd(
    optimizer: Any, params: Sequence[Tensor], groups: Sequence[dict[str, Any]]
) -> list[Tensor]:
    state = optimizer.state
    sources: list[Tensor] = []  # the momentum buffer, else the gradient
    first: list[float] = []  # its factor
    nesterov: list[int] = []
    nest_scale, decay = [], []
    for i, (p, g) in enumerate(zip(params, groups, strict=True)):
        lr, momentum = float(g["lr"]), float(g["momentum"])
        sign = -1.0 if g["maximize"] else 1.0
        c = _decay_factor(lr, float(g["weight_decay"]))
        if momentum == 0:
            sources.append(p.grad)  # type: ignore[arg-type]  # (checked by the caller)
            first.append(-(1 + c) * lr * sign)
            decay.append(c)
        elif g["nesterov"]:  # g + σm·buf = σ(σg + m·buf)
            sources.append(state[p]["momentum_buffer"])
            first.append(sign * momentum)
            nesterov.append(i)
            nest_scale.append(-(1 + c) * lr * sign)
            decay.append(c)
        else:  # the decay is inside the buffer
            sources.append(state[p]["momentum_buffer"])
            first.append(-lr)
            decay.append(0.0)
    delta = list(torch._foreach_mul(sources, first))
    if nesterov:
        picked = [delta[i] for i in nesterov]
        torch._foreach_add_(picked, [params[i].grad for i in nesterov])  # type: ignore[misc]
        torch._foreach_mul_(picked, nest_scale)
    if any(decay):  # − c·θ_after, as (1 − c)·lerp(delta, θ, −c/(1 − c)): no temporary
        values = [p.detach() for p in params]
        torch._foreach_lerp_(delta, values, [-c / (1 - c) for c in decay])
        torch._foreach_mul_(delta, [1 - c for c in decay])
    _change_from(delta, params, [1.0])
    return delta


# -- Adam / AdamW --------------------------------------------------------------------------------


def _adam(
    optimizer: Any, params: Sequence[Tensor], groups: Sequence[dict[str, Any]]
) -> list[Tensor] | None:
    state = optimizer.state
    states = [state[p] for p in params]
    if any("step" not in s for s in states):
        return None
    means, squares, steps, eps, lrs, shrink = [], [], [], [], [], []
    log_b1, log_b2 = [], []
    for s, g in zip(states, groups, strict=True):
        lr, (b1, b2) = float(g["lr"]), (float(b) for b in g["betas"])
        decoupled = g.get("decoupled_weight_decay", False)
        means.append(s["exp_avg"])
        squares.append(s["max_exp_avg_sq"] if g["amsgrad"] else s["exp_avg_sq"])
        steps.append(s["step"])
        eps.append(float(g["eps"]))
        lrs.append(lr)
        shrink.append(1.0 - lr * float(g["weight_decay"]) if decoupled else 1.0)
        log_b1.append(math.log(b1))
        log_b2.append(math.log(b2))
    host = _steps_on_host(steps)
    if host is None:
        return None
    delta = list(torch._foreach_sqrt(squares))  # becomes Δθ in place: one temporary per tensor
    if host:  # CPU step counts (the default): the bias corrections are host floats
        counts = [float(t) for t in steps]  # as torch's own non-capturable step reads them
        sqrt_bc2 = [(-math.expm1(n * lb)) ** 0.5 for n, lb in zip(counts, log_b2, strict=True)]
        scale = [lr / math.expm1(n * lb) for lr, n, lb in zip(lrs, counts, log_b1, strict=True)]
        torch._foreach_div_(delta, sqrt_bc2)
        torch._foreach_add_(delta, eps)
        torch._foreach_reciprocal_(delta)
        torch._foreach_mul_(delta, means)
        torch._foreach_mul_(delta, scale)  # −lr/(1 − β₁ᵗ)
    else:  # step counts on the accelerator (fused): bias corrections as device scalars
        bc1 = torch._foreach_mul(steps, log_b1)
        torch._foreach_expm1_(bc1)  # β₁ᵗ − 1 = −(1 − β₁ᵗ)
        bc2 = torch._foreach_mul(steps, log_b2)
        torch._foreach_expm1_(bc2)
        torch._foreach_neg_(bc2)
        torch._foreach_sqrt_(bc2)
        torch._foreach_div_(delta, bc2)
        torch._foreach_add_(delta, eps)
        torch._foreach_reciprocal_(delta)
        torch._foreach_mul_(delta, means)
        torch._foreach_div_(delta, bc1)
        torch._foreach_mul_(delta, lrs)
    _change_from(delta, params, shrink)
    return delta


# -- helpers -------------------------------------------------------------------------------------


def _change_from(delta: list[Tensor], params: Sequence[Tensor], shrink: list[float]) -> None:
    """delta (the step's term u, θ_after = θ_before·k + u) ← θ_after − θ_before, the change
    the parameters really saw, with θ_before = fl(θ_after − u) / k rebuilt in θ's dtype: the
    optimizer rounded θ_before·k and then θ_before·k + u into that dtype, and undoing each
    rounding usually lands on θ_before exactly (which matters for small tensors whose update
    is a few ulps of θ). k = 1 − lr·wd for a decay applied to θ directly, else 1. Three
    in-place ops, no temporary."""
    values = [p.detach() for p in params]
    torch._foreach_sub_(delta, values)  # −fl(θ_after − u)
    if any(k != 1.0 for k in shrink):  # (the list may be [1.0] alone)
        torch._foreach_div_(delta, shrink)  # −θ_before
    torch._foreach_add_(delta, values)


def _decay_factor(lr: float, weight_decay: float) -> float:
    """c = lr·wd / (1 − lr·wd): SGD's decay term of Δθ in terms of θ after the step."""
    decay = lr * weight_decay
    return decay / (1.0 - decay) if decay else 0.0


def _steps_on_host(steps: Sequence[Any]) -> bool | None:
    """True: CPU step tensors or numbers; False: all on one accelerator; None: mixed."""
    devices = {s.device if isinstance(s, Tensor) else None for s in steps}
    if devices <= {None, torch.device("cpu")}:
        return True
    return False if len(devices) == 1 else None


def _host_number(value: Any) -> bool:
    return not isinstance(value, Tensor) or (value.device.type == "cpu" and value.numel() == 1)
