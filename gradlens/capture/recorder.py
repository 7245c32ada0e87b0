"""The hot path: each step's signals (``capture.signals``) written as one device row.

Per step: the signals' few fused kernels, one ``torch.cat`` into a preallocated device
buffer row, and no host synchronisation. Every ``every`` steps (or ``flush_secs``) the filled
rows go to the host with one asynchronous copy and are handed to ``sink`` (the writer thread).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from gradlens.capture.chunk import Chunk, Layout, StepInfo
from gradlens.capture.norms import NormSignal
from gradlens.capture.signals import LossSignal, ScalerSignal, StepSignal, StepView
from gradlens.instrument.distributed import all_reduce_async, replication_factors, wait_all

__all__ = ["StepRecorder"]


class StepRecorder:
    """Records one set of parameters (an optimizer's, or a model's under manual updates).

    Call ``before_update`` when the gradients are final (optimizer pre-step hook, or end of
    backward for manual SGD) and ``after_update`` once the parameters moved (post-step hook).
    With ``update_lag=1`` (manual updates) both happen in ``before_update``: the update is the
    change since the previous call. The row is the concatenation of the signals' slots: the
    built-in loss, AMP and norm signals, then ``signals`` (see ``capture.signals``).
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
        signals: Sequence[StepSignal] = (),
        updates_from: str = "copy",
    ) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        if len(params) != len(names):
            raise ValueError("params and names differ in length")
        self.params = list(params)
        self.names = tuple(names)
        # Multi-process: squared norms of local shards, summed over ranks by one asynchronous
        # all-reduce per row (see chunk.Layout for how the writer thread undoes it).
        self.reduce = reduce_world > 1
        factors = None
        if self.reduce:
            factors = tuple(replication_factors(list(params), reduce_world))
        self.device = self.params[0].device if self.params else torch.device("cpu")
        self.norms = NormSignal(
            self.params,
            self.device,
            update_lag=update_lag,
            track_updates=track_updates,
            squared=self.reduce,
            updates_from=updates_from,
        )
        self.signals: list[StepSignal] = [LossSignal(), ScalerSignal(), self.norms, *signals]
        self.layout = Layout.of(
            self.signals, names, update_lag=update_lag, factors=factors, world=reduce_world
        )
        self._works: list[Any] = []
        self.sink = sink
        self.every = every
        self.flush_secs = flush_secs
        self._buf = torch.empty(0)
        self._rows: tuple[Tensor, ...] = ()  # views of the buffer's rows
        self._infos: list[StepInfo] = []
        self._view: StepView | None = None
        self._pending: dict[str, Tensor] | None = None
        self._last_flush = time.perf_counter()
        self._defaults = {
            slot.metric: torch.full(
                (self.layout.width(slot),), slot.default, dtype=torch.float32, device=self.device
            )
            for slot in self.layout.slots
        }

    # -- hot path --------------------------------------------------------------------------------

    def before_update(
        self,
        loss: Tensor | None,
        grad_scale: Tensor | None = None,
        skipped: Tensor | None = None,
        amp_scale: Tensor | None = None,
        sample: bool = True,
        step: int = 0,
        primary: bool = True,
        optimizer: Any = None,
        keep_update: bool = True,
    ) -> None:
        """Read gradients and parameters of the step about to be applied.

        ``grad_scale`` divides the gradient norms (fused AMP optimizers see scaled gradients);
        ``skipped`` is a device flag set when the step will not be applied. ``sample=False``
        records gradient norms only: parameter and update norms are sampled steps' work
        (one fused norm call, one stack and the row write is all an unsampled step costs).
        """
        view = StepView(
            self.params,
            self.names,
            self.device,
            step=step,
            loss=loss,
            grad_scale=grad_scale,
            skipped=skipped,
            amp_scale=amp_scale,
            sample=sample,
            primary=primary,
            optimizer=optimizer,
            keep_update=keep_update,
        )
        pending: dict[str, Tensor] = {}
        # set_grad_enabled(False) is no_grad at half the Python cost (~0.7 us a step each)
        with torch.set_grad_enabled(False):
            for signal in self.signals:
                pending.update(signal.before(view))
        self._view, self._pending = view, pending

    def before_clip(self, fresh: bool = False) -> None:
        """A clipping call is about to change the gradients (see ``NormSignal.before_clip``);
        ``fresh``: a backward ran since the last clipping call and no step applied that one."""
        with torch.no_grad():
            if fresh:
                self.norms.forget_clip()
            self.norms.before_clip()

    def after_clip(self, total: Tensor | None, max_norm: float | None) -> None:
        """``clip_grad_norm_`` over exactly these parameters returned ``total``."""
        with torch.no_grad():
            self.norms.after_clip(total, max_norm)

    def after_update(self, info: StepInfo, applied: bool = True) -> None:
        """Finish the row of the step just applied (``applied=False``: it was skipped)."""
        if self._pending is None or self._view is None:
            return
        view, pending = self._view, self._pending
        view.applied = applied
        with torch.set_grad_enabled(False):  # no_grad, cheaper (see before_update)
            for signal in self.signals:
                pending.update(signal.after(view))
            info.sampled = self.norms.sampled
            self._push(pending, info)
        self._pending = self._view = None

    def final_update(self, info: StepInfo) -> None:
        """Manual updates only: record the update applied after the last seen step."""
        if not self.layout.update_lag:
            return
        view = StepView(self.params, self.names, self.device, tail=True)
        with torch.no_grad():
            values = self.norms.after(view)
            if values:
                info.tail = True
                self._push(dict(values), info)

    def last_update(self) -> list[Tensor] | None:
        """Δθ of the step just applied (optimizer mode, right after ``after_update``), else None."""
        return self.norms.last_update()

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
                self.reduce = self.norms.squared = False
                self.layout = Layout(self.layout.names, self.layout.slots, self.layout.update_lag)
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

    def _push(self, values: dict[str, Tensor], info: StepInfo) -> None:
        if self._buf.shape != (self.every, self.layout.size) or self._buf.device != self.device:
            self._buf = torch.empty(
                self.every, self.layout.size, dtype=torch.float32, device=self.device
            )
            self._rows = self._buf.unbind(0)  # the row views, made once: indexing costs ~0.7 us
        row = self._rows[len(self._infos)]
        torch.cat(self.layout.parts(values, self._defaults), out=row)
        if self.reduce:
            self._works.append(all_reduce_async(row[self.layout.reduced]))
        self._infos.append(info)
        if (
            len(self._infos) >= self.every
            or time.perf_counter() - self._last_flush > self.flush_secs
        ):
            self.flush()
