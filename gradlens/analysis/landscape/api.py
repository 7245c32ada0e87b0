"""Loss-landscape slices: the loss on a fixed probe set along 1-D lines and 2-D planes.

``f(α) = L(θ + α·d₁)`` and ``f(α, β) = L(θ + α·d₁ + β·d₂)`` on a symmetric grid that contains
the centre (the model itself). Directions (:mod:`.directions`): random Gaussian with filter
normalization (Li et al. 2018), the top Hessian eigenvectors, the last update, the line to
another checkpoint, or explicit ``{name: tensor}`` dicts. Points are evaluated by the batched
engine of :mod:`.evaluate` in the precision :mod:`.precision` chooses; :mod:`.slice` adds the
summaries. See ``docs/landscape.md``.

Example:
    >>> df = gradlens.loss_landscape(model, F.cross_entropy, (x, y), dims=2, steps=21)
    >>> df.pivot(index="beta", columns="alpha", values="loss")        # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:  # pandas is imported when a slice is built, not by the training process
    import pandas as pd

from gradlens.analysis.landscape.directions import (
    Direction,
    DirectionSpec,
    HessianFn,
    base_tensors,
    plan,
    resolve,
    trainable,
)
from gradlens.analysis.landscape.evaluate import Offsets, evaluate
from gradlens.analysis.landscape.precision import check_indices, choose_precision, setup, tf32
from gradlens.analysis.landscape.slice import Options, check, pair, settings, summaries
from gradlens.analysis.objective import Objective, batches_from_data
from gradlens.functional.landscape import (
    filter_normalized_direction,
    grid_coordinates,
    grid_points,
    total_variation,
)

__all__ = ["landscape", "loss_landscape"]

ROUGHNESS_STEPS = 11  # points per roughness line (m = 10 intervals, Wu et al.'s default)


def _roughness(
    objective: Objective,
    generator: torch.Generator,
    span: float,
    options: Options,
    batch_points: int,
) -> list[float]:
    """Normalized total variation of ``options.roughness`` random filter-normalized lines."""
    params = trainable(objective)
    coords = grid_coordinates(ROUGHNESS_STEPS, span)
    out = []
    for _ in range(options.roughness):
        d = filter_normalized_direction(params, generator, options.norm, options.ignore)
        offsets = Offsets(params, [d], options.channels_last)
        values = evaluate(objective, offsets, grid_points(coords), batch_points, options.dtype)
        out.append(total_variation(values.loss, coords))
    return out


def landscape(
    objective: Objective,
    dims: int = 1,
    directions: DirectionSpec = "filter",
    steps: int | Sequence[int] = 21,
    span: float | Sequence[float] = 1.0,
    *,
    seed: int = 0,
    norm: str = "filter",
    ignore: str = "biasbn",
    orthogonalize: bool = False,
    update: Direction | None = None,
    other: Any = None,
    roughness: int = 8,
    batch_points: int | None = None,
    dtype: torch.dtype | None = None,
    channels_last: bool = False,
    hessian: HessianFn | None = None,
    name: str | None = None,
    check_tol: float = 1e-3,
) -> pd.DataFrame:
    """A slice of ``objective`` (call inside ``objective.isolated()``); see :func:`loss_landscape`.

    ``hessian(k)`` may supply the top-k eigenvectors and eigenvalues; by default they come from
    Lanczos on ``objective`` (``gradlens.analysis.hessian``).
    """
    if check_tol <= 0:
        raise ValueError(f"check_tol must be > 0, got {check_tol}")
    options = Options(
        seed, norm, ignore, orthogonalize, roughness, batch_points, dtype, channels_last
    )
    step_list = [int(s) for s in pair(steps, dims, "steps")]
    span_list = [float(s) for s in pair(span, dims, "span")]
    check(dims, step_list, options)
    coords = [grid_coordinates(s, sp) for s, sp in zip(step_list, span_list, strict=True)]
    generator = torch.Generator().manual_seed(seed)
    found = resolve(
        objective,
        plan(directions, dims),
        generator,
        seed=seed,
        norm=norm,
        ignore=ignore,
        orthogonalize=orthogonalize,
        update=update,
        other=other,
        hessian=hessian,
    )
    base = base_tensors(objective, found.vectors)
    coefs = grid_points(*coords)
    precision, reference, measured = choose_precision(
        objective, base, found.vectors, coefs, dtype, channels_last, check_tol
    )
    options = dataclasses.replace(
        options, dtype=precision.dtype, channels_last=precision.channels_last
    )
    objective, offsets = setup(objective, base, found.vectors, precision.channels_last)
    with tf32(precision.tf32):
        values = evaluate(objective, offsets, coefs, batch_points, precision.dtype)
    check_error = float((values.loss[check_indices(coefs.shape[0])] - reference).abs().max())
    import pandas as pd

    frame = pd.DataFrame(
        {
            "alpha": coefs[:, 0].numpy(),
            "beta": coefs[:, 1].numpy() if dims == 2 else math.nan,
            "loss": values.loss.numpy(),
            "accuracy": values.accuracy.numpy(),
        }
    )
    with tf32(precision.tf32):
        variations = (
            _roughness(objective, generator, span_list[0], options, values.batch_points)
            if roughness
            else []
        )
    label = name or (directions if isinstance(directions, str) else "custom")
    frame.attrs = {
        "slice": f"{label}-{dims}d",
        "directions": found.kinds,
        "dims": dims,
        "steps": step_list,
        "span": span_list,
        "mode": objective.mode,
        **settings(options),
        **summaries(frame, coords, values, variations, found),
        "precision": precision.name,
        "check_error": check_error,
        "check_tol": check_tol,
        "check_points": len(reference),
        "candidates": measured,
    }
    return frame


def loss_landscape(
    model: nn.Module,
    loss_fn: Callable[[Any, Any], Tensor] | None,
    data: Any,
    dims: int = 1,
    directions: DirectionSpec = "filter",
    steps: int | Sequence[int] = 21,
    span: float | Sequence[float] = 1.0,
    *,
    mode: str = "eval",
    seed: int = 0,
    norm: str = "filter",
    ignore: str = "biasbn",
    orthogonalize: bool = False,
    other: Any = None,
    update: Direction | None = None,
    roughness: int = 8,
    batch_points: int | None = None,
    dtype: torch.dtype | None = None,
    channels_last: bool = False,
    check_tol: float = 1e-3,
) -> pd.DataFrame:
    """The loss (and accuracy) of ``model`` on ``data`` along a 1-D or 2-D slice.

    Args:
        model: the model; never modified (its tensors are not written; parameters, buffers,
            gradients, modes and RNG states are restored bit for bit, also on errors).
        loss_fn: ``loss_fn(output, target)``, or ``None`` when the model returns its loss.
        data: an ``(x, y)`` batch, a list of them or a DataLoader: the fixed probe set.
        dims: 1 (``f(α)``) or 2 (``f(α, β)``).
        directions: ``"filter"`` (random, filter-normalized), ``"hessian"`` (top eigenvectors,
            unit norm), ``"update"`` (``update=``), ``"line"`` (towards ``other=``: α=1 is the
            other model), a ``{name: tensor}`` dict, or one kind/dict per axis. Update and
            line planes take a random filter direction as second axis.
        steps: points per axis (odd, so the centre is one); an int or one per axis.
        span: coordinates run over ``[-span, span]``; a float or one per axis.
        mode: ``"eval"`` or ``"train"`` (BatchNorm on batch statistics, dropout on).
        seed: seeds the private generator of the random directions.
        norm, ignore: direction normalization (Li et al.): ``norm`` in ``filter``, ``layer``,
            ``weight``, ``dfilter``, ``dlayer``, ``none``; ``ignore="biasbn"`` zeroes 1-D
            tensors, ``"none"`` sets them to the parameter.
        orthogonalize: make the second direction orthogonal to the first, filter by filter.
        other: the model or state_dict ``directions="line"`` goes to.
        update: ``{name: Δθ}`` for ``directions="update"``.
        roughness: random lines (11 points over ``[-span, span]``) for the roughness index.
        batch_points: points per vmapped pass; ``None`` sizes it, ``1`` is the plain loop.
        dtype: autocast dtype (e.g. ``torch.bfloat16``) for the forward passes.
        channels_last: NHWC inputs and conv weights (faster convolutions on GPUs).
        check_tol: with neither ``dtype`` nor ``channels_last`` given, on CUDA the fastest
            of float32, TF32 and bf16 autocast (+ channels-last for conv nets) whose loss on
            a few check points (centre, ends, quarters) stays within ``check_tol`` (absolute)
            of the float32 loop is used. Every slice records ``precision``, the measured
            ``check_error`` of its own values against the float32 loop and ``candidates``.

    Returns:
        A DataFrame with ``alpha``, ``beta`` (NaN for 1-D), ``loss``, ``accuracy`` (NaN unless
        logits are scored against integer targets), one row per point, alpha-major. ``attrs``
        holds the slice id, directions, slope and curvature at the centre along each axis,
        the roughness index, direction norms and cosine, and the evaluation engine.
    """
    objective = Objective(model, batches_from_data(data, loss_fn), mode)
    with objective.isolated():
        return landscape(
            objective,
            dims,
            directions,
            steps,
            span,
            seed=seed,
            norm=norm,
            ignore=ignore,
            orthogonalize=orthogonalize,
            update=update,
            other=other,
            roughness=roughness,
            batch_points=batch_points,
            dtype=dtype,
            channels_last=channels_last,
            check_tol=check_tol,
        )
