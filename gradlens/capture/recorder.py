"""The hot path: per-step gradient, parameter and update norms kept on the device.

Per step: a few fused ``_foreach`` kernels, one ``torch.cat`` into a preallocated device
buffer row, and no host synchronisation. Every ``every`` steps (or ``flush_secs``) the filled
rows go to the host with one asynchronous copy and are handed to ``sink`` (the writer thread).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from gradlens.capture.chunk import Chunk, Layout, StepInfo
from gradlens.functional.norms import NormPlan, nonfinite_counts, tensor_norms

__all__ = ["StepRecorder"]


class StepRecorder:
    """Records one set of parameters (an optimizer's, or a model's under manual updates).

    Call ``before_update`` when the gradients are final (optimizer pre-step hook, or end of
    backward for manual SGD) and ``after_update`` once the parameters moved (post-step hook).
    With ``update_lag=1`` (manual updates) both happen in ``before_update``: the update is the
    change since the previous call.
    """

    def __init__(
        self,
        params: Sequence[Tensor],
        names: Sequence[str],
        sink: Callable[[Chunk], None],
        *,
        every: int = 50,
        flush_secs: float = 10.0,
        update_lag: int = 0,
        track_updates: bool = True,
        reduce_world: int = 1,
    ) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        if len(params) != len(names):
            raise ValueError("params and names differ in length")
        self.params = list(params)
        # Multi-process: squared norms of local shards, summed over ranks by one asynchronous
        # all-reduce per row (see chunk.Layout for how the writer thread undoes it).
        self.reduce = reduce_world > 1
        factors = None
        if self.reduce:
            from gradlens.instrument.distributed import replication_factors

            factors = tuple(replication_factors(list(params), reduce_world))
        self.layout = Layout(tuple(names), update_lag, factors, reduce_world)
        self._works: list[Any] = []
        self.sink = sink
        self.every = every
        self.flush_secs = flush_secs
        self.track_updates = track_updates
        self.device = self.params[0].device if self.params else torch.device("cpu")
        self._buf = torch.empty(0)
        self._infos: list[StepInfo] = []
        self._saved: list[Tensor] | None = None
        self._pending: list[Tensor] | None = None
        self._applied = True
        self._present: dict[tuple[int, ...], Tensor] = {}
        self._preclip: Tensor | None = None  # gradient norms before a clipping call
        self._clip_coef: Tensor | None = None
        self._last_flush = time.perf_counter()
        f32, dev = torch.float32, self.device
        self._nan = torch.full((1,), float("nan"), dtype=f32, device=dev)
        self._zero = torch.zeros(1, dtype=f32, device=dev)
        self._zeros_p = torch.zeros(len(self.params), dtype=f32, device=dev)
        self._nans_p = torch.full((len(self.params),), float("nan"), dtype=f32, device=dev)
        self._sampled = True  # the step being recorded also reads parameter/update norms
        self._cpu_nonfinite = self.device.type == "cpu"
        # FSDP2 shards are DTensors: the foreach math runs on their local tensors.
        self._sharded = any(callable(getattr(p, "to_local", None)) for p in self.params)
        self._norms = NormPlan(self._values())
        self._norms_both = NormPlan([*self._values(), *self._values()])

    # -- hot path --------------------------------------------------------------------------------

    def before_update(
        self,
        loss: Tensor | None,
        grad_scale: Tensor | None = None,
        skipped: Tensor | None = None,
        amp_scale: Tensor | None = None,
        sample: bool = True,
    ) -> None:
        """Read gradients and parameters of the step about to be applied.

        ``grad_scale`` divides the gradient norms (fused AMP optimizers see scaled gradients);
        ``skipped`` is a device flag set when the step will not be applied. ``sample=False``
        records gradient norms only: parameter and update norms are sampled steps' work
        (one fused norm call, one stack and the row write is all an unsampled step costs).
        """
        sample = sample or bool(self.layout.update_lag)
        with torch.no_grad():
            gnorm, pnorm, nonfinite = self._grad_norms(with_params=sample)
            clipped, coef = self._nan, self._nan
            if self._preclip is not None:
                gnorm, clipped, coef = self._clip_slots(gnorm)
            if grad_scale is not None:
                gnorm = gnorm / grad_scale.to(self.device, torch.float32, non_blocking=True)
            if self.reduce:
                gnorm, pnorm = gnorm * gnorm, pnorm * pnorm
            update = self._nans_p
            if self.layout.update_lag:
                update = self._update_since_saved()
                self._save()
            elif self.track_updates and sample:
                self._save()
                update = self._zeros_p  # what a step GradScaler skips moved
            self._sampled = sample
            loss_slot = _scalar(loss, self._nan, self.device)
            head = [
                loss_slot,
                _scalar(skipped, self._zero, self.device),
                _scalar(amp_scale, self._nan, self.device),
                clipped,
                coef,
            ]
            self._pending = [*head, gnorm, pnorm, update, nonfinite, loss_slot]

    def before_clip(self) -> None:
        """A clipping call is about to change the gradients: keep their norms as the step's
        ``grad_norm`` (the model's own gradient). A second call in one step keeps the first."""
        if self._preclip is not None or self._sharded:
            self._clip_coef = None  # the coefficient is then read off the final gradients
            return
        with torch.no_grad():
            self._preclip = self._grad_norms(with_params=False)[0]
        self._clip_coef = None

    def after_clip(self, total: Tensor | None, max_norm: float | None) -> None:
        """``clip_grad_norm_`` over exactly these parameters returned ``total``: the factor it
        applied is ``min(1, max_norm / (total + 1e-6))`` (no need to read the gradients again)."""
        if self._preclip is None or total is None or max_norm is None:
            return
        with torch.no_grad():
            total = total.detach().to(self.device, torch.float32, non_blocking=True).reshape(1)
            self._clip_coef = (float(max_norm) / (total + 1e-6)).clamp(max=1.0)

    def after_update(self, info: StepInfo, applied: bool = True) -> None:
        """Finish the row of the step just applied (``applied=False``: it was skipped)."""
        if self._pending is None:
            return
        with torch.no_grad():
            if applied and self.track_updates and self._sampled and not self.layout.update_lag:
                self._pending[-3] = self._update_since_saved()  # [..., update, nonfinite, loss]
            self._applied = applied
            info.sampled = self._sampled
            self._push(self._pending, info)
        self._pending = None

    def final_update(self, info: StepInfo) -> None:
        """Manual updates only: record the update applied after the last seen step."""
        if not self.layout.update_lag or self._saved is None:
            return
        with torch.no_grad():
            row = [self._nan, self._zero, self._nan, self._nan, self._nan]
            row += [self._nans_p, self._nans_p]
            row += [self._update_since_saved(), self._nans_p, self._nan]
            info.tail = True
            self._push(row, info)

    def last_update(self) -> list[Tensor] | None:
        """Δθ of the step just applied (optimizer mode, right after ``after_update``), else None.

        After the step the saved copy holds θ_before − θ_after; this returns its negation.
        """
        if self._saved is None or self.layout.update_lag or not self.track_updates:
            return None
        if not self._sampled:  # the update of an unsampled step was not kept
            return None
        if not self._applied:  # skipped by GradScaler: nothing moved
            return [torch.zeros_like(s) for s in self._saved]
        return [-s for s in self._saved]

    def buffered(self) -> list[StepInfo]:
        """Facts of the rows not yet handed to the sink (the training thread may amend them)."""
        return self._infos

    def flush(self) -> None:
        """Hand the buffered rows to the sink (asynchronous device-to-host copy)."""
        n = len(self._infos)
        self._last_flush = time.perf_counter()
        if n == 0:
            return
        if self._works:
            from gradlens.instrument.distributed import wait_all

            pending = len(self._works)
            done = wait_all(self._works)
            if done < pending:  # a rank is gone: keep the reduced rows, record this rank only
                self._infos = self._infos[:done]
                n = done
                print(
                    "gradlens: a rank stopped answering; recording this rank only", file=sys.stderr
                )
                if n:
                    self._hand_over(n)
                self.reduce = False
                self.layout = Layout(self.layout.names, self.layout.update_lag)
                self._infos = []
                return
        self._hand_over(n)

    def _hand_over(self, n: int) -> None:
        """The first ``n`` buffered rows to the sink (asynchronous device-to-host copy)."""
        ready = None
        if self._buf.device.type == "cuda":
            rows = self._buf[:n].to("cpu", non_blocking=True)
            ready = torch.cuda.Event()
            ready.record()
        else:
            rows = self._buf[:n].to("cpu", copy=True)
        self.sink(Chunk(rows, self._infos, self.layout, ready))
        self._infos = []

    # -- helpers ---------------------------------------------------------------------------------

    def _push(self, parts: list[Tensor], info: StepInfo) -> None:
        if self._buf.shape != (self.every, self.layout.size) or self._buf.device != self.device:
            self._buf = torch.empty(
                self.every, self.layout.size, dtype=torch.float32, device=self.device
            )
        row = self._buf[len(self._infos)]
        torch.cat(parts, out=row)
        if self.reduce:
            from gradlens.instrument.distributed import all_reduce_async

            self._works.append(all_reduce_async(row[self.layout.reduced]))
        self._infos.append(info)
        if (
            len(self._infos) >= self.every
            or time.perf_counter() - self._last_flush > self.flush_secs
        ):
            self.flush()

    def _grad_norms(self, with_params: bool) -> tuple[Tensor, Tensor, Tensor]:
        """(per-tensor gradient norms, parameter norms or NaN, non-finite slots); a tensor
        without a gradient this step reads 0. Gradients and parameters go through one fused
        norm call when every gradient is there."""
        grads, missing = self._grads()
        pnorm = self._nans_p
        if not missing:
            if with_params:
                both = self._norms_both([*grads, *self._values()])
                gnorm, pnorm = both[: len(grads)], both[len(grads) :]
            else:
                gnorm = self._norms(grads)
            return gnorm, pnorm, self._nonfinite(grads, gnorm)
        gnorm = tensor_norms(grads, self.device) if grads else self._zeros_p
        nonfinite = self._expand(self._nonfinite(grads, gnorm), missing)
        if with_params:
            pnorm = self._norms(self._values())
        return self._expand(gnorm, missing), pnorm, nonfinite

    def _clip_slots(self, final: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(pre-clip norms, norm after clipping, coefficient) of a step with a clipping call."""
        pre, coef = self._preclip, self._clip_coef
        self._preclip = self._clip_coef = None
        assert pre is not None
        pre_total = pre.square().sum().sqrt().reshape(1)
        if coef is not None:
            clipped = pre_total * coef
        else:  # clip_grad_value_, a subset of the tensors, or several calls: measure
            clipped = final.square().sum().sqrt().reshape(1)
            coef = clipped / pre_total
        return pre, clipped, coef

    def _grads(self) -> tuple[list[Tensor], list[int]]:
        grads, missing = [], []
        for i, p in enumerate(self.params):
            if p.grad is None:
                missing.append(i)
            else:
                grads.append(_local(p.grad) if self._sharded else p.grad)
        return grads, missing

    def _expand(self, values: Tensor, missing: list[int]) -> Tensor:
        """Put zeros at the positions of parameters that had no gradient this step."""
        full = torch.zeros(len(self.params), dtype=torch.float32, device=self.device)
        key = tuple(missing)
        index = self._present.get(key)
        if index is None:  # cached per pattern: no host-to-device copy on later steps
            absent = set(missing)
            present = [i for i in range(len(self.params)) if i not in absent]
            index = self._present[key] = torch.tensor(present, device=self.device)
        if index.numel():
            full.index_copy_(0, index, values)
        return full

    def _nonfinite(self, grads: list[Tensor], gnorm: Tensor) -> Tensor:
        """Non-finite entries per tensor. ‖g‖ is finite iff every entry of g is, so: on the
        CPU (where reading one number is free) entries are counted only on a step whose norms
        are not all finite; on an accelerator the slot is NaN and the writer thread flags each
        tensor whose norm is not finite (1), without a device kernel or a host sync."""
        if not grads:
            return self._zeros_p[: len(grads)]
        if not self._cpu_nonfinite:
            return self._nans_p[: len(grads)]
        if math.isfinite(gnorm.sum().item()):  # a sum of norms is finite iff each is
            return self._zeros_p[: len(grads)]
        return nonfinite_counts(grads, self.device)

    def _save(self) -> None:
        if self._saved is None:
            self._saved = [p.detach().clone() for p in self._values()]
        else:
            torch._foreach_copy_(self._saved, self._values())

    def _update_since_saved(self) -> Tensor:
        if self._saved is None:
            return self._zeros_p
        # In place: the saved copy is refreshed before it is needed again.
        torch._foreach_sub_(self._saved, self._values())
        norms = self._norms(self._saved)
        return norms * norms if self.reduce else norms

    def _values(self) -> list[Tensor]:
        """The parameters' values: local shards for DTensors (FSDP2), else the parameters."""
        if not self._sharded:
            return self.params
        return [_local(p.detach()) for p in self.params]


def _local(t: Tensor) -> Tensor:
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t


def _scalar(value: Tensor | None, default: Tensor, device: torch.device) -> Tensor:
    if value is None:
        return default
    if value.requires_grad:
        value = value.detach()
    return value.reshape(1).to(device, torch.float32, non_blocking=True)
