"""Softmax-collapse signals from the logits, the weight-aligned gradient, the ghost radius.

- Softmax collapse (Prieto et al. 2025, "Grokking at the Edge of Numerical Stability",
  arXiv 2501.04697): once the shifted exp-sum ``Σ_k exp(z_k − max z)`` rounds to exactly 1 in
  the training dtype, the softmax is exactly one-hot and the sample's gradient vanishes.
  :func:`softmax_collapse_stats` is the sync-free per-step version, :func:`softmax_collapse`
  the same numbers as a dict.
- Naive loss minimisation (same paper): the gradient aligns with the weights (it only scales
  the logits); :func:`grad_weight_cosine` measures ``cos(g, w)`` per tensor, the component
  ⊥Grad removes.
- Ghosts of softmax (Sao, arXiv 2603.13552): the radius ``ρ = π/Δ_a`` along an update
  direction and the normalised step ``r = ‖Δθ‖/ρ``, from the logits' directional derivative
  (:func:`ghost_radius_from_derivative`; the JVP through a model is
  ``gradlens.analysis.softmax.ghost_radius``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from gradlens.functional.norms import tensor_norms

__all__ = [
    "SOFTMAX_STATS",
    "ghost_radius_from_derivative",
    "grad_weight_cosine",
    "saturation_gap",
    "softmax_collapse",
    "softmax_collapse_stats",
]

SOFTMAX_STATS = (
    "saturated_fraction",
    "zero_loss_fraction",
    "max_logit_gap",
    "mean_logit_gap",
    "log_z_mean",
    "log_z_max",
    "logit_norm",
    "accuracy",
    "num_samples",
)
"""Order of the entries of :func:`softmax_collapse_stats`'s vector.

- ``saturated_fraction``: samples whose shifted exp-sum is exactly 1 in the logits' dtype.
- ``zero_loss_fraction``: samples whose ``F.cross_entropy`` (in that dtype) is exactly 0.
- ``max_logit_gap``, ``mean_logit_gap``: top-1 minus top-2 logit (max / mean over samples);
  saturation needs this gap above :func:`saturation_gap` (≈16.6 in float32, 7.6 in float16).
- ``log_z_mean``, ``log_z_max``: ``logsumexp(z)`` over samples (the z-loss quantity).
- ``logit_norm``: mean per-sample L2 norm (entries masked with ``-inf`` left out).
- ``accuracy``: argmax equals the target.
- ``num_samples``: rows counted (targets equal to ``ignore_index`` are left out).

``zero_loss_fraction`` and ``accuracy`` are NaN without targets. From log-probabilities
(``log_probs=True``: ``F.nll_loss`` after ``F.log_softmax``, pytorch/examples' style) the
shift-invariant entries are exact and ``log_z_*``/``logit_norm`` are NaN (the shift is gone).
"""


def saturation_gap(dtype: torch.dtype, num_classes: int) -> float:
    """Top-1 minus top-2 gap beyond which a softmax whose others all sit at the gap saturates.

    ``1 + (C−1)·e^{−gap}`` rounds to 1 when ``(C−1)·e^{−gap} < ulp(1)/2``.
    """
    half_ulp = torch.finfo(dtype).eps / 2
    return math.log((num_classes - 1) / half_ulp)


def _rows(logits: Tensor, targets: Tensor | None) -> tuple[Tensor, Tensor | None]:
    if logits.dim() < 2 or logits.shape[-1] < 2:
        raise ValueError(f"logits must be (..., C) with C >= 2, got {tuple(logits.shape)}")
    z = logits.detach().reshape(-1, logits.shape[-1])
    if targets is None:
        return z, None
    t = targets.detach()
    # class indices (...,), or class probabilities (..., C) (soft labels, as F.cross_entropy)
    t = t.reshape(-1, z.shape[1]) if t.is_floating_point() else t.reshape(-1)
    if t.shape[0] != z.shape[0]:
        raise ValueError(f"{z.shape[0]} logit rows but {t.shape[0]} targets")
    return z, t


@torch.no_grad()
def softmax_collapse_stats(
    logits: Tensor,
    targets: Tensor | None = None,
    *,
    ignore_index: int = -100,
    log_probs: bool = False,
) -> Tensor:
    """Softmax-collapse signals as a float32 vector on the logits' device, ordered as
    :data:`SOFTMAX_STATS`; no host synchronisation, the input and its graph untouched.

    ``logits`` is (N, C) or (B, T, V) (leading dims flattened); ``targets`` are class indices
    (rows equal to ``ignore_index`` are left out of every entry) or class probabilities.
    ``log_probs``: ``logits`` are ``log_softmax`` outputs (the loss is ``F.nll_loss``).
    Saturation is computed exactly as Prieto et al. log it, in the logits' own dtype:
    ``(exp(z − max z).sum(-1) == 1)``.

    Example:
        >>> z = torch.tensor([[30.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
        >>> softmax_collapse_stats(z, torch.tensor([0, 0]))[:2]
        tensor([0.5000, 0.5000])
    """
    z, t = _rows(logits, targets)
    # A few passes over the logits, no sort (topk and max-with-indices are slow on the CPU):
    # this runs at every training step.
    best = z.max(-1, keepdim=True)
    first = best.values
    second = z.scatter(1, best.indices, -math.inf).amax(-1)
    exp_sum = torch.exp(z - first).sum(-1)  # in the logits' dtype, as in training
    z32_max = first[:, 0].float()
    gap = z32_max - second.float()
    log_exp_sum = exp_sum.float().log() if exp_sum.dtype != torch.float64 else exp_sum.log()
    log_z = z32_max + log_exp_sum.float()
    wide = torch.float64 if z.dtype == torch.float64 else torch.float32
    # entries masked with -inf (SimCLR's similarity diagonal, causal masks) are not logits
    norms = torch.linalg.vector_norm(z.masked_fill(z == -math.inf, 0), dim=-1, dtype=wide)
    norms = norms.float()
    nan = torch.full_like(gap, math.nan)
    if t is None:
        weight = torch.ones_like(gap)
        zero_loss, correct = nan, nan
    else:
        soft = t.is_floating_point()
        weight = torch.ones_like(gap) if soft else (t != ignore_index).float()
        label = t.argmax(-1) if soft else torch.where(t == ignore_index, 0, t)
        picked = z.gather(1, label[:, None])[:, 0]
        if log_probs:  # nll_loss's per-sample loss is −log p_t itself
            zero_loss = (picked == 0).float()
        elif not soft and z.dtype in (torch.float32, torch.float64):
            # log_softmax's own formula in the logits' dtype: (z_t − max) − log Σ exp(z − max),
            # without another pass over the logits
            zero_loss = (((picked - first[:, 0]) - exp_sum.log()) == 0).float()
        else:  # soft labels, half precisions: whatever F.cross_entropy computes there
            loss = F.cross_entropy(z, t, reduction="none", ignore_index=ignore_index)
            zero_loss = (loss == 0).float()
        correct = (picked == first[:, 0]).float()  # the target holds the largest logit
    count = weight.sum()

    def mean(x: Tensor) -> Tensor:
        return (x * weight).sum() / count

    def largest(x: Tensor) -> Tensor:
        return torch.where(weight > 0, x, -math.inf).amax()

    if log_probs:  # log Z of log-probabilities is 0, their norm is not the logits'
        log_z = norms = nan

    return torch.stack(
        [
            mean((exp_sum == 1).float()),
            mean(zero_loss),
            largest(gap),
            mean(gap),
            mean(log_z),
            largest(log_z),
            mean(norms),
            mean(correct),
            count,
        ]
    )


def softmax_collapse(
    logits: Tensor, targets: Tensor | None = None, *, ignore_index: int = -100
) -> dict[str, float]:
    """:func:`softmax_collapse_stats` as a dict (one host sync); without targets the entries
    that need them (``zero_loss_fraction``, ``accuracy``) are left out.

    Example:
        >>> z = torch.tensor([[30.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
        >>> softmax_collapse(z)["saturated_fraction"]
        0.5
    """
    values = softmax_collapse_stats(logits, targets, ignore_index=ignore_index).tolist()
    out = dict(zip(SOFTMAX_STATS, values, strict=True))
    if targets is None:
        del out["zero_loss_fraction"], out["accuracy"]
    return out


def grad_weight_cosine(
    params: Sequence[Tensor], grads: Sequence[Tensor | None], *, include_global: bool = False
) -> Tensor:
    """``cos(g, w) = ⟨g, w⟩/(‖g‖‖w‖)`` per tensor, as a float32 vector; 0 where a norm is 0.

    Naive loss minimisation (Prieto et al. 2025) shows as ``cos(g, w) → −1``: the descent
    direction ``−g`` points along ``+w``, which only scales the logits; ``cos²`` is the share
    of the gradient that ⊥Grad removes. A fixed number of fused ``_foreach`` kernels whatever
    the number of tensors, no host synchronisation: with unit vectors ``ŵ = w/‖w‖`` and
    ``ĝ = g/‖g‖``, ``cos = (‖ŵ + ĝ‖² − 2)/2`` (scaling first keeps the small gradient's
    direction from drowning in the weights' rounding). ``include_global`` appends the cosine
    of the concatenated parameters and gradients.

    Example:
        >>> w = torch.tensor([1.0, 0.0])
        >>> grad_weight_cosine([w, w], [-w, torch.tensor([0.0, 2.0])])
        tensor([-1.,  0.])
    """
    if len(params) != len(grads):
        raise ValueError(f"{len(params)} params but {len(grads)} grads")
    if not params:
        return torch.zeros(int(include_global))
    device = params[0].device
    present = [i for i, g in enumerate(grads) if g is not None and g.numel()]
    with torch.no_grad():
        ws = [_wide(params[i]) for i in present]
        gs = [_wide(grads[i]) for i in present]  # type: ignore[arg-type]
        out = torch.zeros(len(params), dtype=torch.float64, device=device)
        w_norms = torch.zeros(len(params), dtype=torch.float64, device=device)
        g_norms = torch.zeros(len(params), dtype=torch.float64, device=device)
        if ws:
            n = len(ws)
            norms = tensor_norms([*ws, *gs], device).double()
            wn, gn = norms[:n], norms[n:]
            tiny = torch.finfo(torch.float32).tiny
            units = torch._foreach_div(ws, list(torch.unbind(wn.clamp_min(tiny).float())))
            torch._foreach_add_(
                units, torch._foreach_div(gs, list(torch.unbind(gn.clamp_min(tiny).float())))
            )
            sums = tensor_norms(units, device).double()
            cos = torch.where((wn > 0) & (gn > 0), (sums.square() - 2) / 2, 0.0).clamp(-1, 1)
            index = _index(tuple(present), device)
            out.index_copy_(0, index, cos)
            w_norms.index_copy_(0, index, wn)
            g_norms.index_copy_(0, index, gn)
        if include_global:
            dot = (out * w_norms * g_norms).sum()
            total = _safe_cosine(dot, w_norms.square().sum().sqrt(), g_norms.square().sum().sqrt())
            out = torch.cat([out, total[None]])
    return out.float()


def _wide(t: Tensor) -> Tensor:
    """float32 at least (a half-precision unit vector is too coarse for a cosine), a complex
    tensor as its real view (the real inner product ``Re⟨w, g⟩``); called under ``no_grad``,
    so nothing is recorded for autograd. A sparse gradient stays sparse: adding it to the dense
    unit weight sums repeated indices."""
    if t.is_complex():
        t = torch.view_as_real(t.resolve_conj())
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


_INDEX: dict[tuple[tuple[int, ...], torch.device], Tensor] = {}


def _index(present: tuple[int, ...], device: torch.device) -> Tensor:
    """Positions as a device tensor, cached (no host-to-device copy per call)."""
    key = (present, device)
    if key not in _INDEX:
        _INDEX[key] = torch.tensor(present, device=device)
    return _INDEX[key]


def _safe_cosine(dot: Tensor, a: Tensor, b: Tensor) -> Tensor:
    denom = a * b
    return torch.where(denom > 0, dot / torch.where(denom > 0, denom, 1.0), 0.0)


def ghost_radius_from_derivative(dlogits: Tensor, step: float | Tensor) -> dict[str, float]:
    """The ghosts-of-softmax radius (Sao 2026, arXiv 2603.13552) from the logits' directional
    derivative ``dlogits`` (…, C) along a unit direction and the step length ``‖Δθ‖``.

    - ``delta_a`` = max over samples of ``max_k a_k − min_k a_k``;
    - ``rho = π/delta_a`` (``delta_a`` floored at 1e-12), the step length along the direction
      within which the softmax has no complex singularity;
    - ``step``, and ``r = step/rho`` (collapse was seen once ``r ≥ 1``).

    Example:
        >>> ghost_radius_from_derivative(torch.tensor([[0.0, math.pi]]), 0.5)["r"]
        0.5
    """
    a = dlogits.detach().reshape(-1, dlogits.shape[-1]).double()
    delta_a = (a.amax(-1) - a.amin(-1)).amax()
    rho = math.pi / delta_a.clamp_min(1e-12)
    step = float(step)
    return {
        "delta_a": float(delta_a),
        "rho": float(rho),
        "step": step,
        "r": float(step / rho),
    }
