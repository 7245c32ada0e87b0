"""The ghosts-of-softmax radius of a model along an update direction (Sao 2026,
arXiv 2603.13552), from one JVP of its logits; the arithmetic on the logits' directional
derivative is :func:`gradlens.functional.softmax.ghost_radius_from_derivative`.

The JVP is forward-mode AD (``torch.func.jvp``); where an operation has no forward-AD formula
(``torch.nn.utils.parametrizations.weight_norm``'s ``_weight_norm_interface``) the same
derivative comes exactly from two reverse passes (the double-VJP trick: ``J v = ∂(Jᵀu · v)/∂u``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, jvp

from gradlens.functional.softmax import ghost_radius_from_derivative

__all__ = ["NoLogits", "ghost_radius", "jvp_by_double_backward"]


def ghost_radius(
    model: nn.Module,
    inputs: Any,
    direction: Mapping[str, Tensor],
    *,
    kwargs: Mapping[str, Any] | None = None,
    output_fn: Callable[[Any], Tensor] | None = None,
) -> dict[str, float]:
    """Ghosts-of-softmax radius along ``direction`` (Sao 2026, arXiv 2603.13552), one JVP.

    ``direction`` maps parameter names (``model.named_parameters()``) to the update ``Δθ``
    (others are held fixed). With ``v = Δθ/‖Δθ‖`` and ``a = ∂z/∂θ · v`` (the logits'
    directional derivative, one ``torch.func.jvp`` through ``functional_call``):

    - ``delta_a`` = max over samples of ``max_k a_k − min_k a_k``;
    - ``rho = π/delta_a`` (``delta_a`` floored at 1e-12), the step length along ``v`` within
      which the softmax has no complex singularity;
    - ``step = ‖Δθ‖``, and ``r = step/rho`` (collapse was seen once ``r ≥ 1``).

    The model runs as it is: put it in ``eval()`` first so BatchNorm statistics stay put.
    ``output_fn`` picks the logits out of the model output (default: the output itself, its
    first element, its ``"logits"`` entry or ``.logits``).

    Example:
        >>> ghost_radius(model, x, {"fc.weight": update})["r"]  # doctest: +SKIP
    """
    names = list(direction)
    named = dict(model.named_parameters())
    missing = [n for n in names if n not in named]
    if missing:
        raise ValueError(f"direction names unknown parameters: {missing[:3]}")
    if not names:
        raise ValueError("direction is empty")
    tangents = {n: direction[n].detach().to(named[n].dtype) for n in names}
    step = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(t.double()) for t in tangents.values()])
    )
    unit = {
        n: t / step.to(t.dtype).clamp_min(torch.finfo(t.dtype).tiny) for n, t in tangents.items()
    }
    primals = {n: named[n].detach() for n in names}
    args = inputs if isinstance(inputs, tuple) else (inputs,)
    pick = output_fn or _logits

    def logits_at(params: dict[str, Tensor]) -> Tensor:
        return pick(functional_call(model, params, args, dict(kwargs or {}), strict=False))

    try:
        with warnings.catch_warnings():  # torch.func's first jvp scripts a decomposition
            warnings.filterwarnings("ignore", ".*torch.jit.script.*", DeprecationWarning)
            dlogits = jvp(logits_at, (primals,), (unit,))[1]
    except Exception:  # no forward-AD formula for some operation: two reverse passes
        dlogits = jvp_by_double_backward(logits_at, primals, unit)
    return ghost_radius_from_derivative(dlogits, step)


def jvp_by_double_backward(
    fn: Callable[[dict[str, Tensor]], Tensor],
    primals: Mapping[str, Tensor],
    tangents: Mapping[str, Tensor],
) -> Tensor:
    """``∂fn(θ)/∂θ · v`` by reverse mode only: ``g(u) = Jᵀu`` with a graph, then ``∂(g·v)/∂u``.

    Exact (no step size), for models whose operations have a backward of their backward but
    no forward-AD formula. ``fn`` maps parameter names to tensors (``functional_call``).
    """
    with torch.enable_grad():
        params = {n: p.detach().requires_grad_(True) for n, p in primals.items()}
        out = fn(params)
        u = torch.zeros_like(out, requires_grad=True)
        grads = torch.autograd.grad(
            out, list(params.values()), grad_outputs=u, create_graph=True, allow_unused=True
        )
        pairs = [
            (g, tangents[n].to(g.dtype))
            for g, n in zip(grads, params, strict=True)
            if g is not None and g.requires_grad
        ]
        if not pairs:
            return torch.zeros_like(out).detach()
        (derivative,) = torch.autograd.grad(
            [g for g, _ in pairs], u, grad_outputs=[t for _, t in pairs], allow_unused=True
        )
    return torch.zeros_like(out).detach() if derivative is None else derivative.detach()


class NoLogits(ValueError):
    """The model output holds no logits (e.g. only the loss): pass ``output_fn``."""


def _logits(output: Any) -> Tensor:
    """The logits in a model output: the output itself, its ``logits`` entry or attribute, or
    the first tensor of a tuple that is not a scalar (``(loss, logits)`` and ``(logits,
    loss)`` both occur); a scalar is a loss, not logits."""
    if isinstance(output, Mapping):
        found = output.get("logits")
    elif isinstance(output, tuple | list):
        found = next((t for t in output if isinstance(t, Tensor) and t.dim() > 0), None)
    else:
        found = output if isinstance(output, Tensor) else getattr(output, "logits", None)
    if not isinstance(found, Tensor):
        raise NoLogits("cannot find the logits in the model output; pass output_fn")
    if found.dim() == 0:
        raise NoLogits("the model returns a scalar (a loss), not logits; pass output_fn")
    return found
