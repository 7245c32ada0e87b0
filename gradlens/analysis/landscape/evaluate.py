"""The batched evaluation engine of landscape slices: the loss (and accuracy) at many points
``θ + Σ_j c_j d_j``.

Points are evaluated through ``torch.func.functional_call`` — the live model's tensors are
never written — many points per pass with ``torch.vmap`` where that pays and works (chunks
sized to feed the device within a memory budget, halved on out-of-memory), a plain loop
otherwise, and with no host synchronisation per point. Common random numbers: in train mode
every point starts from the same RNG state.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from gradlens.analysis.landscape.directions import Direction
from gradlens.analysis.objective import Batch, Objective, extract_loss

__all__ = ["Evaluated", "Offsets", "clock", "evaluate", "loop_losses"]

_FEED_SAMPLES = 1024  # samples per pass past which batching points stops paying
_MIN_POINTS = {"cpu": 8}  # fewer points per pass do not amortise vmap's overhead (measured)
_MAX_POINTS = 64
_AUTOTUNE_POINTS = 4  # time both engines when the grid holds this many chunks or more
_CPU_BUDGET = 1 << 30  # bytes for one batched pass on the CPU
_ACTIVATION_FACTOR = 4  # live activations ≈ 4 × the largest op output (residual nets)


class Offsets:
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
    objective: Objective, offsets: Offsets, dtype: torch.dtype | None, coef: Tensor
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
    objective: Objective, offsets: Offsets, n_points: int, dtype: torch.dtype | None
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
class Evaluated:
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
        start = clock(self.device)
        for _ in range(chunk):
            self.step(coefs, 1)
        looped = (clock(self.device) - start) / chunk
        start = clock(self.device)
        after = self.step(coefs, chunk)
        if after != chunk:  # vmap failed (or ran out of memory): no fair comparison
            return after, None
        batched = (clock(self.device) - start) / chunk
        return (chunk if batched < looped else 1), {"loop": looped, "vmap": batched}


def evaluate(
    objective: Objective,
    offsets: Offsets,
    coefs: Tensor,
    batch_points: int | None,
    dtype: torch.dtype | None,
) -> Evaluated:
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
    return Evaluated(loss, accuracy, engine, chunk, runner.fallback, timings)


def _after_failure(exc: Exception, chunk: int) -> tuple[int, str | None]:
    """Next chunk size after a failed batched pass: half on OOM, else the plain loop."""
    if _is_oom(exc):
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return max(1, chunk // 2), None
    return 1, f"{type(exc).__name__}: {exc}"[:300]


def loop_losses(
    objective: Objective, offsets: Offsets, coefs: Tensor, dtype: torch.dtype | None
) -> tuple[Tensor, float]:
    """Losses of ``coefs`` one point at a time (after a warm-up point) and seconds per point."""
    exact = torch.float32 if objective.device.type == "mps" else torch.float64
    coefs = coefs.to(objective.device, exact)
    replay = _RngReplay(objective.mode == "train", objective.device)
    out = []
    with torch.no_grad():
        replay()
        _point(objective, offsets, dtype, coefs[0])
        start = clock(objective.device)
        for c in coefs:
            replay()
            out.append(_point(objective, offsets, dtype, c)[0].reshape(1))
        seconds = (clock(objective.device) - start) / coefs.shape[0]
    return torch.cat(out).to("cpu", torch.float64), seconds


def clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
