"""Loss-landscape slices: the loss on a fixed probe set along 1-D lines and 2-D planes.

``f(α) = L(θ + α·d₁)`` and ``f(α, β) = L(θ + α·d₁ + β·d₂)`` on a symmetric grid that contains
the centre (the model itself). Directions: random Gaussian with filter normalization
(Li et al. 2018), the top Hessian eigenvectors, the last update, the line to another
checkpoint, or explicit ``{name: tensor}`` dicts. Points are evaluated through
``torch.func.functional_call`` — the live model's tensors are never written — many points per
pass with ``torch.vmap`` where that pays and works, a plain loop otherwise, and with no host
synchronisation per point. See ``docs/landscape.md``.

Example:
    >>> df = gradlens.loss_landscape(model, F.cross_entropy, (x, y), dims=2, steps=21)
    >>> df.pivot(index="beta", columns="alpha", values="loss")        # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from gradlens.functional.landscape import (
    central_differences,
    filter_normalized_direction,
    grid_coordinates,
    grid_points,
    orthogonalize_filterwise,
    roughness_index,
    total_variation,
)
from gradlens.objective import Batch, Objective, batches_from_data, extract_loss

__all__ = [
    "KINDS",
    "filter_directions",
    "landscape",
    "landscape_rows",
    "loss_landscape",
]

KINDS = ("filter", "hessian", "update", "line")
Direction = Mapping[str, Tensor]
DirectionSpec = str | Direction | Sequence[str | Direction]
HessianFn = Callable[[int], tuple[list[dict[str, Tensor]], list[float]]]

ROUGHNESS_STEPS = 11  # points per roughness line (m = 10 intervals, Wu et al.'s default)
_FEED_SAMPLES = 1024  # samples per pass past which batching points stops paying
_MIN_POINTS = {"cpu": 8}  # fewer points per pass do not amortise vmap's overhead (measured)
_MAX_POINTS = 64
_AUTOTUNE_POINTS = 4  # time both engines when the grid holds this many chunks or more
_CPU_BUDGET = 1 << 30  # bytes for one batched pass on the CPU
_ACTIVATION_FACTOR = 4  # live activations ≈ 4 × the largest op output (residual nets)


# -- directions ------------------------------------------------------------------------------


def _trainable(objective: Objective) -> dict[str, Tensor]:
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


def _plan(directions: DirectionSpec, dims: int) -> list[str | Direction]:
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
    for name, p in _trainable(objective).items():
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
    params = _trainable(objective)
    unknown = set(update) - set(params)
    if unknown:
        raise ValueError(f"update names no trainable parameter: {sorted(unknown)[0]!r}")
    return {n: u.detach().to(params[n].device, params[n].dtype) for n, u in update.items()}


def _objective_hessian(objective: Objective, seed: int) -> HessianFn:
    """Top eigenvectors by Lanczos on the objective (``gradlens.hessian``, imported lazily)."""

    def top(k: int) -> tuple[list[dict[str, Tensor]], list[float]]:
        try:
            from gradlens.hessian import HVP, top_eigenpairs
        except ImportError as exc:  # pragma: no cover - depends on the Hessian module
            raise ImportError("directions='hessian' needs gradlens.hessian") from exc
        result = top_eigenpairs(HVP(objective), k=k, which="LA", seed=seed)
        return result.eigenvectors, [float(v) for v in result.eigenvalues]

    return top


@dataclass
class _Directions:
    kinds: list[str]
    vectors: list[dict[str, Tensor]]
    eigenvalues: list[float] | None = None


def _resolve(
    objective: Objective,
    plan: list[str | Direction],
    generator: torch.Generator,
    options: _Options,
    update: Direction | None,
    other: Any,
    hessian: HessianFn | None,
) -> _Directions:
    params = _trainable(objective)
    wanted = sum(1 for item in plan if item == "hessian")
    eigen: tuple[list[dict[str, Tensor]], list[float]] = ([], [])
    if wanted:
        eigen = (hessian or _objective_hessian(objective, options.seed))(wanted)
    out = _Directions([], [], eigen[1] or None)
    for item in plan:
        if isinstance(item, Mapping):
            kind, vector = "custom", {n: t.detach() for n, t in item.items()}
        elif item == "filter":
            kind = item
            vector = filter_normalized_direction(params, generator, options.norm, options.ignore)
        elif item == "hessian":
            kind, vector = item, eigen[0][out.kinds.count("hessian")]
        elif item == "update":
            kind, vector = item, _update_direction(objective, update)
        else:
            kind, vector = item, _line_direction(objective, other)
        out.kinds.append(kind)
        out.vectors.append(vector)
    if options.orthogonalize and len(out.vectors) == 2:
        out.vectors[1] = orthogonalize_filterwise(out.vectors[1], out.vectors[0])
    return out


# -- evaluation ------------------------------------------------------------------------------


class _Offsets:
    """θ and k directions, flattened per (device, dtype): a point's tensors cost one matmul.

    ``params(c)`` returns ``{name: θ + Σ_j c_j d_j}`` as views of one flat tensor per group;
    under ``torch.vmap`` over ``c`` the same code builds a chunk of points in one GEMM. With
    ``channels_last`` 4-D tensors are laid out NHWC so the views are channels-last.
    """

    def __init__(
        self, base: Mapping[str, Tensor], directions: Sequence[Direction], channels_last: bool
    ) -> None:
        self.k = len(directions)
        groups: dict[tuple[torch.device, torch.dtype], list[str]] = {}
        for name, t in base.items():
            if any(name in d for d in directions):
                groups.setdefault((t.device, t.dtype), []).append(name)
        self.groups: list[tuple[Tensor, Tensor, list[tuple[str, torch.Size, bool]]]] = []
        for members in groups.values():
            layout = [(n, base[n].shape, channels_last and base[n].dim() == 4) for n in members]
            theta = torch.cat([_flat(base[n], cl) for n, _, cl in layout])
            rows = [
                torch.cat([_flat(_entry(d, n, base[n]), cl) for n, _, cl in layout])
                for d in directions
            ]
            self.groups.append((theta, torch.stack(rows), layout))

    def params(self, coef: Tensor) -> dict[str, Tensor]:
        out = {}
        for theta, rows, layout in self.groups:
            flat = theta + coef.to(theta.device, theta.dtype) @ rows
            offset = 0
            for name, shape, cl in layout:
                n = math.prod(shape)
                out[name] = _unflat(flat[offset : offset + n], shape, cl)
                offset += n
        return out

    def bytes_per_point(self) -> int:
        return sum(theta.numel() * theta.element_size() for theta, _, _ in self.groups)


def _entry(direction: Direction, name: str, like: Tensor) -> Tensor:
    value = direction.get(name)
    if value is None:
        return torch.zeros_like(like)
    if value.shape != like.shape:
        raise ValueError(f"direction {name!r} has shape {tuple(value.shape)}, not {like.shape}")
    return value.detach().to(like.device, like.dtype)


def _flat(t: Tensor, channels_last: bool) -> Tensor:
    return (t.permute(0, 2, 3, 1) if channels_last else t).reshape(-1)


def _unflat(flat: Tensor, shape: torch.Size, channels_last: bool) -> Tensor:
    if channels_last:
        o, c, h, w = shape
        return flat.view(o, h, w, c).permute(0, 3, 1, 2)
    return flat.view(shape)


def _accuracy_counts(output: Any, target: Any) -> tuple[Tensor, Tensor] | None:
    """Correct and counted predictions for (…, C) logits with integer targets, else None.

    ``(N, C)`` with ``(N,)``, ``(B, T, V)`` with ``(B, T)`` or ``(B·T,)``; negative targets
    (``ignore_index=-100``) are not counted.
    """
    if not isinstance(output, Tensor) or not isinstance(target, Tensor):
        return None
    if not output.is_floating_point() or output.dim() < 2:
        return None
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        return None
    if output.numel() // output.shape[-1] != target.numel():
        return None
    labels = target.reshape(-1)
    valid = labels >= 0
    correct = ((output.argmax(-1).reshape(-1) == labels) & valid).sum()
    return correct, valid.sum()


def _point(
    objective: Objective, offsets: _Offsets, dtype: torch.dtype | None, coef: Tensor
) -> tuple[Tensor, Tensor]:
    """Loss and accuracy of one point (weighted over the batches, as ``Objective.loss``)."""
    params = offsets.params(coef)
    total: Tensor | None = None
    correct: Tensor | None = None
    count: Tensor | None = None
    classify = True
    for batch, weight in objective.weighted_batches():
        loss, counts = _batch_values(objective.model, batch, params, dtype)
        part = loss * weight
        total = part if total is None else total + part
        if counts is None:
            classify = False
        elif classify:
            correct = counts[0] if correct is None else correct + counts[0]
            count = counts[1] if count is None else count + counts[1]
    assert total is not None
    if classify and correct is not None and count is not None:
        accuracy = correct.to(torch.float32) / count.to(torch.float32)
    else:
        accuracy = torch.full_like(total, math.nan, dtype=torch.float32)
    return total, accuracy


def _batch_values(
    model: nn.Module, batch: Batch, params: dict[str, Tensor], dtype: torch.dtype | None
) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
    with _autocast(params, dtype):
        output = functional_call(model, params, batch.args, batch.kwargs, strict=False)
        if batch.loss_fn is None:
            return extract_loss(output), None
        loss = batch.loss_fn(output, batch.target)
    return loss, _accuracy_counts(output, batch.target)


def _autocast(params: Mapping[str, Tensor], dtype: torch.dtype | None) -> Any:
    if dtype is None:
        return contextlib.nullcontext()
    device = next(iter(params.values())).device.type if params else "cpu"
    return torch.autocast(device, dtype=dtype)


class _RngReplay:
    """Common random numbers: every point (or chunk) starts from the same RNG state."""

    def __init__(self, active: bool, device: torch.device) -> None:
        self.device = device
        self.cpu = torch.get_rng_state() if active else None
        cuda = active and device.type == "cuda"
        self.cuda = torch.cuda.get_rng_state(device) if cuda else None

    def __call__(self) -> None:
        if self.cpu is not None:
            torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)


class _LargestOutput(TorchDispatchMode):
    """Records the largest tensor any op produces (for sizing batched passes)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, Tensor):
                self.largest = max(self.largest, t.numel() * t.element_size())
        return out


def _memory_budget(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free) // 4
    return _CPU_BUDGET


def _auto_batch_points(
    objective: Objective, offsets: _Offsets, n_points: int, dtype: torch.dtype | None
) -> int:
    """Points per pass: enough samples to feed the device, within a memory budget."""
    device = objective.device
    samples = max(b.size for b in objective.batches)
    least = _MIN_POINTS.get(device.type, 2)
    wanted = min(math.ceil(_FEED_SAMPLES / max(samples, 1)), n_points, _MAX_POINTS)
    if wanted < least:
        return 1
    probe = _LargestOutput()
    with probe:
        _point(objective, offsets, dtype, torch.zeros(offsets.k, dtype=torch.float64))
    per_point = offsets.bytes_per_point() + _ACTIVATION_FACTOR * probe.largest
    chunk = min(wanted, _memory_budget(device) // max(per_point, 1))
    return chunk if chunk >= least else 1


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc)


@dataclass
class _Evaluated:
    loss: Tensor  # (P,) float64 on the CPU
    accuracy: Tensor  # (P,) float64, NaN when not a classification
    engine: str
    batch_points: int
    fallback: str | None
    autotune: dict[str, float] | None  # seconds per point of each engine, when measured


class _Runner:
    """Evaluates points chunk by chunk, keeping results on the device (no host sync)."""

    def __init__(
        self, point: Callable[[Tensor], tuple[Tensor, Tensor]], objective: Objective
    ) -> None:
        self.point = point
        self.device = objective.device
        self.replay = _RngReplay(objective.mode == "train", objective.device)
        self.losses: list[Tensor] = []
        self.accs: list[Tensor] = []
        self.done = 0
        self.used_vmap = False
        self.fallback: str | None = None

    def step(self, coefs: Tensor, chunk: int) -> int:
        """Evaluate the next ``chunk`` points; returns the chunk size to go on with."""
        block = coefs[self.done : self.done + chunk]
        self.replay()
        if chunk > 1:
            try:
                loss, acc = torch.vmap(self.point, randomness="same")(block)
            except Exception as exc:
                chunk, reason = _after_failure(exc, chunk)
                self.fallback = reason or self.fallback
                return chunk
            self.used_vmap = True
        else:
            loss, acc = (v.reshape(1) for v in self.point(block[0]))
        self.losses.append(loss.detach())
        self.accs.append(acc.detach())
        self.done += block.shape[0]
        return chunk

    def run(self, coefs: Tensor, chunk: int) -> int:
        while self.done < coefs.shape[0]:
            chunk = self.step(coefs, chunk)
        return chunk

    def autotune(self, coefs: Tensor, chunk: int) -> tuple[int, dict[str, float] | None]:
        """Time ``chunk`` looped points against one vmapped chunk; go on with the faster."""
        start = self._clock()
        for _ in range(chunk):
            self.step(coefs, 1)
        looped = (self._clock() - start) / chunk
        start = self._clock()
        after = self.step(coefs, chunk)
        if after != chunk:  # vmap failed (or ran out of memory): no fair comparison
            return after, None
        batched = (self._clock() - start) / chunk
        return (chunk if batched < looped else 1), {"loop": looped, "vmap": batched}

    def _clock(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()


def _evaluate(
    objective: Objective,
    offsets: _Offsets,
    coefs: Tensor,
    batch_points: int | None,
    dtype: torch.dtype | None,
) -> _Evaluated:
    """Every point's loss and accuracy: vmapped chunks, halved on OOM, a loop as fallback.

    With ``batch_points=None`` the chunk is sized (:func:`_auto_batch_points`) and, on grids
    large enough to afford it, the first points time both engines to pick the faster.
    """
    n = coefs.shape[0]
    # all coefficients go to the device once: a per-point host-to-device copy would sync
    exact = torch.float32 if objective.device.type == "mps" else torch.float64
    coefs = coefs.to(objective.device, exact)
    runner = _Runner(functools.partial(_point, objective, offsets, dtype), objective)
    timings = None
    with torch.no_grad():
        chunk = batch_points or _auto_batch_points(objective, offsets, n, dtype)
        if batch_points is None and chunk > 1 and n >= _AUTOTUNE_POINTS * chunk:
            chunk, timings = runner.autotune(coefs, chunk)
        chunk = runner.run(coefs, chunk)
        loss = torch.cat(runner.losses).to("cpu", torch.float64)  # the host reads once, here
        accuracy = torch.cat(runner.accs).to("cpu", torch.float64)
    engine = "vmap" if runner.used_vmap and chunk > 1 else "loop"
    return _Evaluated(loss, accuracy, engine, chunk, runner.fallback, timings)


def _after_failure(exc: Exception, chunk: int) -> tuple[int, str | None]:
    """Next chunk size after a failed batched pass: half on OOM, else the plain loop."""
    if _is_oom(exc):
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return max(1, chunk // 2), None
    return 1, f"{type(exc).__name__}: {exc}"[:300]


# -- precision: the fastest engine within tol of the float32 loop -------------------------------

CHECK_POINTS = 5  # grid points (centre, ends, quarters) evaluated by the float32 loop as a check


@dataclass(frozen=True)
class _Precision:
    name: str
    dtype: torch.dtype | None = None
    channels_last: bool = False
    tf32: bool = False


def _candidates(
    objective: Objective, dtype: torch.dtype | None, channels_last: bool
) -> list[_Precision]:
    """What ``auto`` may use: on CUDA also TF32 and bf16 autocast (with channels-last when the
    model has convolutions); elsewhere only what was asked for."""
    asked = _Precision(
        "float32" if dtype is None else str(dtype).removeprefix("torch."), dtype, channels_last
    )
    if objective.device.type != "cuda" or dtype is not None or channels_last:
        return [asked]
    conv = any(p.dim() == 4 for p in objective.params)
    out = [asked, _Precision("tf32", tf32=True)]
    out.append(_Precision("bfloat16+channels_last" if conv else "bfloat16", torch.bfloat16, conv))
    return out


@contextlib.contextmanager
def _tf32(enabled: bool) -> Any:
    if not enabled:
        yield
        return
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _check_indices(n: int) -> list[int]:
    return sorted({0, n // 4, n // 2, (3 * n) // 4, n - 1})[:CHECK_POINTS]


def _setup(
    objective: Objective, base: dict[str, Tensor], vectors: Sequence[Direction], cl: bool
) -> tuple[Objective, _Offsets]:
    return (_channels_last_objective(objective) if cl else objective), _Offsets(base, vectors, cl)


def _loop_losses(
    objective: Objective, offsets: _Offsets, coefs: Tensor, dtype: torch.dtype | None
) -> tuple[Tensor, float]:
    """Losses of ``coefs`` one point at a time (after a warm-up point) and seconds per point."""
    exact = torch.float32 if objective.device.type == "mps" else torch.float64
    coefs = coefs.to(objective.device, exact)
    replay = _RngReplay(objective.mode == "train", objective.device)
    out = []
    with torch.no_grad():
        replay()
        _point(objective, offsets, dtype, coefs[0])
        start = _clock(objective.device)
        for c in coefs:
            replay()
            out.append(_point(objective, offsets, dtype, c)[0].reshape(1))
        seconds = (_clock(objective.device) - start) / coefs.shape[0]
    return torch.cat(out).to("cpu", torch.float64), seconds


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _choose_precision(
    objective: Objective,
    base: dict[str, Tensor],
    vectors: Sequence[Direction],
    coefs: Tensor,
    candidates: list[_Precision],
    tol: float,
) -> tuple[_Precision, Tensor, dict[str, dict[str, float]]]:
    """The float32 loop on the check points, then each candidate timed there; the fastest
    whose largest absolute loss error stays within ``tol`` wins (float32 always qualifies)."""
    points = coefs[_check_indices(coefs.shape[0])]
    reference, _ = _loop_losses(objective, _Offsets(base, vectors, False), points, None)
    measured: dict[str, dict[str, float]] = {}
    for candidate in candidates if len(candidates) > 1 else []:
        obj, offsets = _setup(objective, base, vectors, candidate.channels_last)
        with _tf32(candidate.tf32):
            losses, seconds = _loop_losses(obj, offsets, points, candidate.dtype)
        error = float((losses - reference).abs().max())
        measured[candidate.name] = {"seconds_per_point": seconds, "error": error}
    qualified = [
        c for c in candidates if c.name not in measured or measured[c.name]["error"] <= tol
    ]
    best = min(
        qualified,
        key=lambda c: measured[c.name]["seconds_per_point"] if c.name in measured else 0.0,
    )
    return best, reference, measured


# -- slices ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Options:
    seed: int = 0
    norm: str = "filter"
    ignore: str = "biasbn"
    orthogonalize: bool = False
    roughness: int = 8
    batch_points: int | None = None
    dtype: torch.dtype | None = None
    channels_last: bool = False


def _pair(value: Any, dims: int, what: str) -> list[Any]:
    values = list(value) if isinstance(value, tuple | list) else [value] * dims
    if len(values) != dims:
        raise ValueError(f"{what} needs {dims} values for dims={dims}, got {len(values)}")
    return values


def _check(dims: int, steps: list[int], options: _Options) -> None:
    if dims not in (1, 2):
        raise ValueError(f"dims must be 1 or 2, got {dims}")
    for s in steps:
        if int(s) < 3:
            raise ValueError(f"steps must be at least 3 (curvature needs neighbours), got {s}")
    if options.roughness < 0 or options.roughness == 1:
        raise ValueError(f"roughness needs 0 or at least 2 lines, got {options.roughness}")
    if options.batch_points is not None and options.batch_points < 1:
        raise ValueError(f"batch_points must be >= 1, got {options.batch_points}")


def _channels_last_objective(objective: Objective) -> Objective:
    def convert(value: Any) -> Any:
        if isinstance(value, Tensor) and value.dim() == 4 and value.is_floating_point():
            return value.contiguous(memory_format=torch.channels_last)
        return value

    batches = [
        dataclasses.replace(b, args=tuple(convert(a) for a in b.args)) for b in objective.batches
    ]
    return Objective(objective.model, batches, objective.mode)


def _base(objective: Objective, vectors: Sequence[Direction]) -> dict[str, Tensor]:
    """The tensors the directions move: trainable parameters, and float buffers by name."""
    base = _trainable(objective)
    buffers = {n: b for n, b in objective.model.named_buffers() if b.is_floating_point()}
    for vector in vectors:
        for name in vector:
            if name in buffers:
                base.setdefault(name, buffers[name].detach())
            elif name not in base:
                raise ValueError(f"direction entry {name!r} is no trainable parameter or buffer")
    return base


def _axis_summary(frame: pd.DataFrame, coords: list[Tensor]) -> dict[str, dict[str, float]]:
    """Slope and curvature at the centre along each axis (the lines through the centre)."""
    slope, curvature = {}, {}
    loss = torch.tensor(frame["loss"].to_numpy())
    if len(coords) == 1:
        lines = {"alpha": loss}
    else:
        grid = loss.reshape(len(coords[0]), len(coords[1]))
        lines = {"alpha": grid[:, len(coords[1]) // 2], "beta": grid[len(coords[0]) // 2, :]}
    for (axis, line), c in zip(lines.items(), coords, strict=True):
        slope[axis], curvature[axis] = central_differences(line, c)
    return {"slope": slope, "curvature": curvature}


def _roughness(
    objective: Objective,
    generator: torch.Generator,
    span: float,
    options: _Options,
    batch_points: int,
) -> list[float]:
    """Normalized total variation of ``options.roughness`` random filter-normalized lines."""
    params = _trainable(objective)
    coords = grid_coordinates(ROUGHNESS_STEPS, span)
    out = []
    for _ in range(options.roughness):
        d = filter_normalized_direction(params, generator, options.norm, options.ignore)
        offsets = _Offsets(params, [d], options.channels_last)
        values = _evaluate(objective, offsets, grid_points(coords), batch_points, options.dtype)
        out.append(total_variation(values.loss, coords))
    return out


def _norm(vector: Direction) -> float:
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in vector.values()))


def _cosine(a: Direction, b: Direction) -> float:
    dot = sum(float((t.double() * b[n].double()).sum()) for n, t in a.items() if n in b)
    denominator = _norm(a) * _norm(b)
    return dot / denominator if denominator > 0 else math.nan


def _settings(options: _Options) -> dict[str, Any]:
    dtype = str(options.dtype).removeprefix("torch.") if options.dtype else "float32"
    return {
        "seed": options.seed,
        "norm": options.norm,
        "ignore": options.ignore,
        "orthogonalize": options.orthogonalize,
        "dtype": dtype,
    }


def _summaries(
    frame: pd.DataFrame,
    coords: list[Tensor],
    values: _Evaluated,
    variations: list[float],
    found: _Directions,
) -> dict[str, Any]:
    return {
        "centre_loss": float(values.loss[values.loss.numel() // 2]),
        **_axis_summary(frame, coords),
        "roughness": roughness_index(variations),
        "roughness_variations": variations,
        "direction_norms": [_norm(v) for v in found.vectors],
        "cosine": _cosine(*found.vectors) if len(found.vectors) == 2 else math.nan,
        "eigenvalues": found.eigenvalues,
        "nonfinite": int((~torch.isfinite(values.loss)).sum()),
        "engine": values.engine,
        "batch_points": values.batch_points,
        "fallback": values.fallback,
        "autotune": values.autotune,
    }


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
    Lanczos on ``objective`` (``gradlens.hessian``).
    """
    if check_tol <= 0:
        raise ValueError(f"check_tol must be > 0, got {check_tol}")
    options = _Options(
        seed, norm, ignore, orthogonalize, roughness, batch_points, dtype, channels_last
    )
    step_list = [int(s) for s in _pair(steps, dims, "steps")]
    span_list = [float(s) for s in _pair(span, dims, "span")]
    _check(dims, step_list, options)
    coords = [grid_coordinates(s, sp) for s, sp in zip(step_list, span_list, strict=True)]
    generator = torch.Generator().manual_seed(seed)
    found = _resolve(objective, _plan(directions, dims), generator, options, update, other, hessian)
    base = _base(objective, found.vectors)
    coefs = grid_points(*coords)
    candidates = _candidates(objective, dtype, channels_last)
    precision, reference, measured = _choose_precision(
        objective, base, found.vectors, coefs, candidates, check_tol
    )
    options = dataclasses.replace(
        options, dtype=precision.dtype, channels_last=precision.channels_last
    )
    objective, offsets = _setup(objective, base, found.vectors, precision.channels_last)
    with _tf32(precision.tf32):
        values = _evaluate(objective, offsets, coefs, batch_points, precision.dtype)
    check_error = float((values.loss[_check_indices(coefs.shape[0])] - reference).abs().max())
    frame = pd.DataFrame(
        {
            "alpha": coefs[:, 0].numpy(),
            "beta": coefs[:, 1].numpy() if dims == 2 else math.nan,
            "loss": values.loss.numpy(),
            "accuracy": values.accuracy.numpy(),
        }
    )
    with _tf32(precision.tf32):
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
        **_settings(options),
        **_summaries(frame, coords, values, variations, found),
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
    hessian: HessianFn | None = None
    if "hessian" in _plan(directions, dims):
        hessian = _hessian_eigenvectors(objective, loss_fn, seed)
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
            hessian=hessian,
            check_tol=check_tol,
        )


def _hessian_eigenvectors(
    objective: Objective, loss_fn: Callable[[Any, Any], Tensor] | None, seed: int
) -> HessianFn:
    """Top eigenpairs by ``gradlens.hessian.hessian_eigenvalues`` on the same batches."""
    if loss_fn is None:
        data: list[Any] = [b.args for b in objective.batches]
    else:
        data = [(*b.args, b.target) for b in objective.batches]  # iterators are consumed

    def top(k: int) -> tuple[list[dict[str, Tensor]], list[float]]:
        from gradlens.hessian import hessian_eigenvalues

        result = hessian_eigenvalues(
            objective.model, loss_fn, data, k=k, which="LA", mode=objective.mode, seed=seed
        )
        return list(result.eigenvectors), [float(v) for v in result.eigenvalues]

    return top


def landscape_rows(frame: pd.DataFrame, step: int) -> dict[str, dict[str, list[Any]]]:
    """``landscape`` table rows for a slice: per point loss (and accuracy), then summaries.

    Summary metrics (``roughness``, ``slope_<axis>``, ``curvature_<axis>``, ``nonfinite``)
    have NaN coordinates.
    """
    attrs = frame.attrs
    metrics = ["loss"] + (["accuracy"] if frame["accuracy"].notna().any() else [])
    columns: dict[str, list[Any]] = {"metric": [], "alpha": [], "beta": [], "value": []}
    for metric in metrics:
        columns["metric"] += [metric] * len(frame)
        columns["alpha"] += frame["alpha"].tolist()
        columns["beta"] += frame["beta"].tolist()
        columns["value"] += frame[metric].tolist()
    summary = {"roughness": attrs["roughness"], "nonfinite": float(attrs["nonfinite"])}
    if "check_error" in attrs:  # |loss − float32 loop| on the check points
        summary["check_error"] = attrs["check_error"]
    for kind in ("slope", "curvature"):
        summary.update({f"{kind}_{axis}": v for axis, v in attrs[kind].items()})
    for metric, value in summary.items():
        columns["metric"].append(metric)
        columns["alpha"].append(math.nan)
        columns["beta"].append(math.nan)
        columns["value"].append(float(value))
    n = len(columns["metric"])
    rows = {"step": [step] * n, "slice": [attrs["slice"]] * n, **columns}
    return {"landscape": rows}
