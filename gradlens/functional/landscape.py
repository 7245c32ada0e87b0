"""Loss-landscape math on tensors: directions, filter normalization, grids, slice summaries.

Pure functions of tensors: nothing here touches a model, the global RNG or any device state.

Directions follow Li et al. 2018 (arXiv 1712.09913, ``net_plotter.py`` at 64ef4d5): one
standard normal tensor per parameter, drawn in parameter order as ``torch.randn(w.size())``
on the CPU (here from a private :class:`torch.Generator`), then normalized tensor by tensor:

- tensors with more than one dimension by ``norm`` (default ``"filter"``: each slice along the
  first dimension — a conv output channel, a linear row — gets the norm of the matching slice
  of θ, ``d_i ← d_i / (‖d_i‖ + 1e-10) · ‖θ_i‖``);
- tensors with at most one dimension (biases, norm-layer scales and shifts) by ``ignore``:
  ``"biasbn"`` zeroes them (the default here; Li et al.'s default is no normalization at all,
  which gives NaN surfaces, their issue #25), ``"none"`` sets them to the parameter itself.

The roughness index is Wu et al.'s (arXiv 2103.11069, ``tvd`` in wukekever/landscapes): the
total variation of each 1-D line normalized by its coordinate range and its value range, and
the coefficient of variation of those over random directions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

__all__ = [
    "IGNORES",
    "NORMS",
    "central_differences",
    "filter_normalized_direction",
    "gaussian_direction",
    "grid_coordinates",
    "grid_points",
    "normalize_direction",
    "normalize_tensor",
    "orthogonalize_filterwise",
    "roughness_index",
    "total_variation",
]

NORMS = ("filter", "layer", "weight", "dfilter", "dlayer", "none")
IGNORES = ("biasbn", "none")
_EPS = 1e-10  # Li et al.'s denominator guard


def _work_dtype(t: Tensor) -> torch.dtype:
    """Float32 at least: normalizing in bf16/fp16 would lose the norms we promise."""
    return torch.promote_types(t.dtype, torch.float32)


def _row_norms(t: Tensor) -> Tensor:
    """Norms of the slices along the first dimension, shaped to broadcast against ``t``."""
    norms = t.reshape(t.shape[0], -1).norm(dim=1)
    return norms.reshape(-1, *([1] * (t.dim() - 1)))


def normalize_tensor(d: Tensor, w: Tensor, norm: str = "filter") -> Tensor:
    """One direction tensor ``d`` normalized against its parameter ``w`` (``d.dim() > 1``).

    ``filter``: per first-dimension slice to ``‖w_i‖``; ``layer``: whole tensor to ``‖w‖``;
    ``weight``: ``d * w``; ``dfilter``/``dlayer``: unit norm per slice / tensor; ``none``.
    """
    if norm == "filter":
        return d * (_row_norms(w) / (_row_norms(d) + _EPS))
    if norm == "layer":
        return d * (w.norm() / (d.norm() + _EPS))
    if norm == "weight":
        return d * w
    if norm == "dfilter":
        return d / (_row_norms(d) + _EPS)
    if norm == "dlayer":
        return d / (d.norm() + _EPS)
    if norm == "none":
        return d
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def normalize_direction(
    direction: Mapping[str, Tensor],
    params: Mapping[str, Tensor],
    norm: str = "filter",
    ignore: str = "biasbn",
) -> dict[str, Tensor]:
    """Normalize every tensor of ``direction`` against ``params`` (Li et al.'s rules).

    Tensors with ``dim() <= 1`` follow ``ignore``: ``"biasbn"`` → zeros, ``"none"`` → a copy of
    the parameter. The result has each parameter's dtype and device.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if ignore not in IGNORES:
        raise ValueError(f"ignore must be one of {IGNORES}, got {ignore!r}")
    out = {}
    for name, d in direction.items():
        w = params[name].detach()
        if w.dim() <= 1:
            out[name] = torch.zeros_like(w) if ignore == "biasbn" else w.clone()
            continue
        work = _work_dtype(w)
        scaled = normalize_tensor(d.to(w.device, work), w.to(work), norm)
        out[name] = scaled.to(w.dtype)
    return out


def gaussian_direction(
    params: Mapping[str, Tensor], generator: torch.Generator
) -> dict[str, Tensor]:
    """Standard normal tensors shaped like ``params``, in order, from ``generator``.

    Drawn on the CPU in float32 (``torch.randn(w.size())`` as Li et al.) so a seed gives the
    same direction on every device; moved to each parameter's device afterwards.
    """
    if generator.device.type != "cpu":
        raise ValueError("gaussian_direction draws on the CPU; pass a CPU torch.Generator")
    return {
        name: torch.randn(p.shape, generator=generator, dtype=torch.float32).to(p.device)
        for name, p in params.items()
    }


def filter_normalized_direction(
    params: Mapping[str, Tensor],
    generator: torch.Generator,
    norm: str = "filter",
    ignore: str = "biasbn",
) -> dict[str, Tensor]:
    """A random Gaussian direction, normalized (default: per filter, biases/norms zeroed).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> d = filter_normalized_direction(dict(model.named_parameters()), g)  # doctest: +SKIP
    """
    return normalize_direction(gaussian_direction(params, generator), params, norm, ignore)


def orthogonalize_filterwise(
    direction: Mapping[str, Tensor], against: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """``direction`` made orthogonal to ``against`` filter by filter, keeping filter norms.

    Each first-dimension slice of a ``dim() > 1`` tensor loses its component along the
    matching slice of ``against`` and is rescaled to its former norm, so a filter-normalized
    direction stays filter-normalized. Tensors with ``dim() <= 1`` are left as they are (zero
    under ``ignore="biasbn"``, so the whole directions are then orthogonal).
    """
    out = {}
    for name, d in direction.items():
        a = against.get(name)
        if a is None or d.dim() <= 1:
            out[name] = d.clone()
            continue
        work = _work_dtype(d)
        d2, a2 = d.to(work).reshape(d.shape[0], -1), a.to(work).reshape(d.shape[0], -1)
        norms = d2.norm(dim=1, keepdim=True)
        coef = (d2 * a2).sum(1, keepdim=True) / (a2 * a2).sum(1, keepdim=True).clamp_min(1e-30)
        rest = d2 - coef * a2
        rest = rest * (norms / (rest.norm(dim=1, keepdim=True) + _EPS))
        out[name] = rest.reshape(d.shape).to(d.dtype)
    return out


def grid_coordinates(steps: int, span: float) -> Tensor:
    """``steps`` float64 coordinates on ``[-span, span]``: symmetric, and 0 exactly in the middle.

    ``steps`` must be odd so the centre (the model itself) is a grid point.
    """
    if steps < 1 or steps % 2 == 0:
        raise ValueError(
            f"steps must be a positive odd number (the centre is a point), got {steps}"
        )
    if not span > 0 or span == float("inf"):
        raise ValueError(f"span must be positive and finite, got {span}")
    line = torch.linspace(-span, span, steps, dtype=torch.float64)
    return (line - line.flip(0)) / 2  # exact antisymmetry: c[i] == -c[-1-i], c[mid] == 0


def grid_points(alphas: Tensor, betas: Tensor | None = None) -> Tensor:
    """Coefficients of every grid point, ``(len(alphas)[·len(betas)], dims)``, alpha-major.

    Row ``i * len(betas) + j`` is ``(alphas[i], betas[j])``: coordinates travel with the values,
    so no traversal order can misalign the grid.
    """
    if betas is None:
        return alphas.reshape(-1, 1).clone()
    a, b = torch.meshgrid(alphas, betas, indexing="ij")
    return torch.stack([a.reshape(-1), b.reshape(-1)], dim=1)


def central_differences(values: Tensor, coords: Tensor) -> tuple[float, float]:
    """Slope and curvature at the centre of an odd, evenly spaced 1-D slice.

    ``slope = (f(h) − f(−h)) / 2h`` and ``curvature = (f(h) − 2f(0) + f(−h)) / h²``, with ``h``
    the grid step: exact for a quadratic (``gᵀd`` and ``dᵀHd``), O(h²) otherwise.
    """
    if values.numel() < 3 or values.numel() % 2 == 0:
        raise ValueError("central differences need an odd number of at least 3 points")
    mid = values.numel() // 2
    f = values.to(torch.float64)
    h = float(coords[mid + 1] - coords[mid - 1]) / 2
    slope = float(f[mid + 1] - f[mid - 1]) / (2 * h)
    curvature = float(f[mid + 1] - 2 * f[mid] + f[mid - 1]) / (h * h)
    return slope, curvature


def total_variation(values: Tensor, coords: Tensor) -> float:
    """Normalized total variation ``Σ|Δf| / (t_max − t_min) / (max f − min f)`` of one line.

    NaN when the line holds a non-finite value or is constant (the ratio is undefined).
    """
    f = values.to(torch.float64)
    if f.numel() < 2 or not bool(torch.isfinite(f).all()):
        return float("nan")
    value_range = float(f.max() - f.min())
    if value_range == 0.0:
        return float("nan")
    t_range = float(coords.max() - coords.min())
    return float(f.diff().abs().sum()) / t_range / value_range


def roughness_index(variations: Sequence[float] | Tensor) -> float:
    """``std(T; ddof=1) / mean(T)`` over the lines' normalized total variations (NaN dropped).

    0 for a quadratic at its minimum or a linear function; larger for rougher landscapes.
    NaN with fewer than two finite lines.
    """
    t = torch.as_tensor(variations, dtype=torch.float64).reshape(-1)
    t = t[torch.isfinite(t)]
    if t.numel() < 2:
        return float("nan")
    return float(t.std(correction=1) / t.mean())
