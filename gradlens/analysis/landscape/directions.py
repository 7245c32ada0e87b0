"""The directions of a landscape slice: random filter-normalized (Li et al. 2018), the top
Hessian eigenvectors, the last update, the line to another checkpoint, or ``{name: tensor}``.

A direction is a dict parameter (or float buffer) name → tensor of that entry's shape;
names it leaves out do not move.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from gradlens.analysis.objective import Objective
from gradlens.functional.landscape import filter_normalized_direction, orthogonalize_filterwise

__all__ = [
    "KINDS",
    "Direction",
    "DirectionSpec",
    "Directions",
    "HessianFn",
    "base_tensors",
    "filter_directions",
    "plan",
    "resolve",
    "trainable",
]

KINDS = ("filter", "hessian", "update", "line")
Direction = Mapping[str, Tensor]
DirectionSpec = str | Direction | Sequence[str | Direction]
HessianFn = Callable[[int], tuple[list[dict[str, Tensor]], list[float]]]


def trainable(objective: Objective) -> dict[str, Tensor]:
    """The objective's trainable parameters, detached, by name."""
    return {n: p.detach() for n, p in zip(objective.names, objective.params, strict=True)}


def filter_directions(
    model: nn.Module,
    count: int = 1,
    *,
    seed: int = 0,
    norm: str = "filter",
    ignore: str = "biasbn",
    orthogonalize: bool = False,
) -> list[dict[str, Tensor]]:
    """The random directions :func:`loss_landscape` draws for ``directions="filter"``.

    Gaussian, from a private generator seeded with ``seed`` (the global RNG is untouched),
    over the trainable parameters in ``named_parameters()`` order, normalized by ``norm`` and
    ``ignore`` (see :mod:`gradlens.functional.landscape`).
    """
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    generator = torch.Generator().manual_seed(seed)
    out = [filter_normalized_direction(params, generator, norm, ignore) for _ in range(count)]
    if orthogonalize and count == 2:
        out[1] = orthogonalize_filterwise(out[1], out[0])
    return out


def plan(directions: DirectionSpec, dims: int) -> list[str | Direction]:
    """One entry (a kind or a dict) per axis; update/line planes get a random second axis."""
    if isinstance(directions, str):
        if directions not in KINDS:
            raise ValueError(f"directions must be one of {KINDS} or dicts, got {directions!r}")
        if directions in ("update", "line"):
            return [directions, *(["filter"] * (dims - 1))]
        return [directions] * dims
    items: list[str | Direction] = (
        [directions] if isinstance(directions, Mapping) else list(directions)
    )
    if len(items) != dims:
        raise ValueError(f"dims={dims} needs {dims} directions, got {len(items)}")
    for item in items:
        if isinstance(item, str) and item not in KINDS:
            raise ValueError(f"direction kinds are {KINDS}, got {item!r}")
    return items


def _line_direction(objective: Objective, other: Any) -> dict[str, Tensor]:
    """``θ' − θ`` over trainable parameters and float buffers (BatchNorm statistics too)."""
    if other is None:
        raise ValueError("directions='line' needs other= (a model or a state_dict)")
    state = other.state_dict() if isinstance(other, nn.Module) else other
    out = {}
    for name, p in trainable(objective).items():
        if name not in state:
            raise ValueError(f"other has no entry {name!r}")
        out[name] = state[name].detach().to(p.device, p.dtype) - p
    for name, b in objective.model.named_buffers():
        if b.is_floating_point() and name in state:
            out[name] = state[name].detach().to(b.device, b.dtype) - b
    return out


def _update_direction(objective: Objective, update: Direction | None) -> dict[str, Tensor]:
    if update is None:
        raise ValueError("directions='update' needs update= (parameter name → last update)")
    params = trainable(objective)
    unknown = set(update) - set(params)
    if unknown:
        raise ValueError(f"update names no trainable parameter: {sorted(unknown)[0]!r}")
    return {n: u.detach().to(params[n].device, params[n].dtype) for n, u in update.items()}


def _objective_hessian(objective: Objective, seed: int) -> HessianFn:
    """Top eigenvectors by Lanczos on the objective (``gradlens.analysis.hessian``)."""

    def top(k: int) -> tuple[list[dict[str, Tensor]], list[float]]:
        from gradlens.analysis.hessian.api import hessian_directions

        return hessian_directions(objective, k, seed=seed)

    return top


@dataclass
class Directions:
    """The kind of each axis (``custom`` for dicts), its vector, and the Hessian eigenvalues
    when Hessian axes were asked for."""

    kinds: list[str]
    vectors: list[dict[str, Tensor]]
    eigenvalues: list[float] | None = None


def resolve(
    objective: Objective,
    axes: list[str | Direction],
    generator: torch.Generator,
    *,
    seed: int = 0,
    norm: str = "filter",
    ignore: str = "biasbn",
    orthogonalize: bool = False,
    update: Direction | None = None,
    other: Any = None,
    hessian: HessianFn | None = None,
) -> Directions:
    """The vector of each planned axis (random ones drawn from ``generator`` in axis order)."""
    params = trainable(objective)
    wanted = sum(1 for item in axes if item == "hessian")
    eigen: tuple[list[dict[str, Tensor]], list[float]] = ([], [])
    if wanted:
        eigen = (hessian or _objective_hessian(objective, seed))(wanted)
    out = Directions([], [], eigen[1] or None)
    for item in axes:
        if isinstance(item, Mapping):
            kind, vector = "custom", {n: t.detach() for n, t in item.items()}
        elif item == "filter":
            kind = item
            vector = filter_normalized_direction(params, generator, norm, ignore)
        elif item == "hessian":
            kind, vector = item, eigen[0][out.kinds.count("hessian")]
        elif item == "update":
            kind, vector = item, _update_direction(objective, update)
        else:
            kind, vector = item, _line_direction(objective, other)
        out.kinds.append(kind)
        out.vectors.append(vector)
    if orthogonalize and len(out.vectors) == 2:
        out.vectors[1] = orthogonalize_filterwise(out.vectors[1], out.vectors[0])
    return out


def base_tensors(objective: Objective, vectors: Sequence[Direction]) -> dict[str, Tensor]:
    """The tensors the directions move: trainable parameters, and float buffers by name."""
    base = trainable(objective)
    buffers = {n: b for n, b in objective.model.named_buffers() if b.is_floating_point()}
    for vector in vectors:
        for name in vector:
            if name in buffers:
                base.setdefault(name, buffers[name].detach())
            elif name not in base:
                raise ValueError(f"direction entry {name!r} is no trainable parameter or buffer")
    return base
