"""When a step is captured: the optimizer hooks, the loss, AMP scaling, closures and clipping.

Capture happens once per optimizer step: at the optimizer's pre-step hook (gradients are final:
accumulated over micro-batches, unscaled by GradScaler, all-reduced by DDP), or — for a step
given a closure (LBFGS, Lightning) — right after the closure produced this step's gradients;
or when backward completes if the script updates parameters by hand and creates no optimizer.
The loss of a step is what was backpropagated since the previous one (unscaled when
GradScaler scaled it); a step GradScaler skips is recorded as skipped with the gradients it
refused. A ``clip_grad_norm_``/``clip_grad_value_`` call is seen: the norms are taken before
it and the clipped norm is recorded beside them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from gradlens.capture.chunk import StepInfo
from gradlens.capture.facts import learning_rate
from gradlens.capture.model_calls import ModelCalls
from gradlens.capture.roles import Tracked
from gradlens.capture.tracking import Tracking
from gradlens.instrument import interception
from gradlens.instrument.guard import Guard
from gradlens.instrument.tracing import tracing

__all__ = ["CAPTURE", "CLIP", "StepCapture"]

CAPTURE, CLIP = "capture", "clip capture"  # features the guard switches off


class StepCapture(interception.ListenerBase):
    """The run's step counter and the capture of each optimizer step (an interception
    listener of the backward, GradScaler and clipping events)."""

    def __init__(
        self,
        tracking: Tracking,
        calls: ModelCalls,
        guard: Guard,
        *,
        param_every: int,
        due: Callable[[int], bool],
        on_end: Callable[[torch.optim.Optimizer | None], None],
        on_unseen: Callable[[str, str], None] = lambda feature, why: None,
    ) -> None:
        self.tracking, self.calls, self.guard = tracking, calls, guard
        self.param_every = param_every
        self.due = due  # a probe runs after this step (it needs this step's Δθ)
        self.on_end = on_end  # after the primary's step: step already advanced
        # optimizer steps happen that no hook sees: (what is missing, why), said once
        self.on_unseen = on_unseen
        self._moved_unseen = 0  # moves of the weights between backward passes, no step seen
        self._versions_seen: tuple[int, ...] = ()  # param versions at the last backward
        self._stepping: torch.optim.Optimizer | None = None  # whose step() is running
        self._inner: set[int] = set()  # id() of optimizers stepped inside it (not recorded)
        self.step = 0
        self.closure_done = False  # this step's closure ran; later calls are line search
        self._loss: Tensor | None = None
        self._loss_at: tuple[int, ...] = ()  # Tracking.param_versions() at its first backward
        self._scaled: tuple[Tensor, Tensor] | None = None  # (scaled, unscaled)
        self._scaler_step: list[Any] | None = None  # [scaler, optimizer, pre-hook fired]
        self._wall0 = time.time()
        self._last_end = time.perf_counter()
        self.backwards = 0  # backward() calls of the script seen so far
        self._clip_backwards = 0  # self.backwards at the last clipping call
        # At the last backward's end: the sentinels' gradient marks and the model calls so far
        self._grads_seen: tuple[Any, ...] = ()
        self._calls_seen = 0
        # An optimizer stepped where no hook runs (compiled step): its rows are taken at each
        # backward's end and committed once the weights are seen to have moved.
        self._unseen: torch.optim.Optimizer | None = None
        self._tentative: tuple[int, ...] | None = None  # param versions at the pending row
        self._tentative_lrs: tuple[Any, ...] = ()  # the step's learning rates (before it)
        self._end_deferred: list[torch.optim.Optimizer] = []  # on_end waits for the backward

    def start(self, wall0: float) -> None:
        self._wall0, self._last_end = wall0, time.perf_counter()

    # -- interception events ---------------------------------------------------------------------

    def on_backward(self, tensor: Tensor) -> None:
        self.backwards += 1
        if self.closure_done or not self.guard.active(CAPTURE):
            return  # a closure's later calls (line search) are not this step's loss
        if self._scaled is not None and tensor is self._scaled[0]:
            tensor = self._scaled[1]
        value = tensor.detach()  # (float32 and shape (1,) when the row is written)
        versions = self.tracking.param_versions()
        if self._unseen is not None:
            if self._tentative is not None and versions != self._tentative:
                self._commit_unseen()  # the weights moved since the last backward: a step
                self._loss = None
        elif self.step == 0 and self._moved_unseen >= 0:
            self._check_unseen(versions)
        marks = self.tracking.grad_marks()
        if (
            self._loss is not None
            and marks != self._grads_seen
            and self.tracking.root_calls != self._calls_seen
            and versions == self._loss_at
        ):  # gradients cleared and a new forward since the last backward, no step: the
            self._loss = None  # script dropped that backward (`if not isfinite(loss): continue`)
        self._grads_seen = marks
        if self._loss is None:
            self._loss, self._loss_at = value, versions
        elif versions == self._loss_at:  # accumulation, several tasks: the losses add up
            self._loss = self._loss.float() + value.float()
        # else the parameters moved in place since this step's first backward (SAM's ascent
        # step): that loss is at other weights; the step's loss is the one before they moved

    def _check_unseen(self, versions: tuple[int, ...]) -> None:
        """Before the first captured step: the weights moved in place between backward passes
        twice with no optimizer step seen, so steps run where no hook does (an
        ``optimizer.step`` inside ``torch.compile``: hooks are not run in compiled code)."""
        last, self._versions_seen = self._versions_seen, versions
        if last and versions and versions != last:
            self._moved_unseen += 1
        if self._moved_unseen < 2:
            return
        steps, self._moved_unseen = self._moved_unseen, -1  # said: not checked again
        known = list(self.tracking.known)
        if len(known) == 1 and self.tracking.tracked_for(known[0]) is not None:
            self._unseen, self._loss, self.step = known[0], None, steps
            self.on_unseen(
                "step hooks",
                "the weights change between backward passes but no optimizer step is seen "
                "(an optimizer.step inside torch.compile? its hooks do not run in compiled "
                f"code): steps are recorded from step {steps} on, read at the end of each "
                "backward and counted when the weights move (clipping is not recorded)",
            )
            return
        self.on_unseen(
            "step capture",
            "the weights change between backward passes but no optimizer step is seen "
            "(an optimizer.step inside torch.compile? its hooks do not run in compiled "
            "code): no per-step rows are recorded",
        )

    def after_backward(self) -> None:
        self._grads_seen = self.tracking.grad_marks()
        self._calls_seen = self.tracking.root_calls
        if self._end_deferred:  # the script's graph is consumed: probes may touch weights
            self.on_end(self._end_deferred.pop())
        if self._unseen is not None:
            self.guard.call(CAPTURE, self._capture_unseen, self._unseen)
        elif not self.tracking.known:
            self.guard.call(CAPTURE, self._capture_manual)

    def on_scale(self, unscaled: Tensor, scaled: Tensor) -> None:
        self._scaled = (scaled, unscaled)

    def before_scaler_step(self, scaler: Any, optimizer: Any) -> None:
        self._scaler_step = [scaler, optimizer, False]

    def after_scaler_step(self, scaler: Any, optimizer: Any) -> None:
        context, self._scaler_step = self._scaler_step, None
        if context is None or context[2] or not _scaler_enabled(scaler):
            return
        # GradScaler found inf/NaN and skipped optimizer.step(): record the step as skipped,
        # with the (unscaled, non-finite) gradients it refused.
        self.guard.call(CAPTURE, self._capture, optimizer, scaler._get_scale_async())
        self.post_step(optimizer, (), {}, skipped=True)

    def before_clip(self, params: list[Tensor]) -> None:
        if self._unseen is not None:
            return  # the row was read before the clip (at the end of backward)
        tracked = self.guard.call(CLIP, self._owner_of, params)
        # A backward since the last clipping call with no step between them: that clip's
        # gradients were never applied (`clip_grad_norm_` then a skipped step; SAM's ascent).
        fresh, self._clip_backwards = self.backwards != self._clip_backwards, self.backwards
        if tracked is not None:
            self.guard.call(CLIP, tracked.recorder.before_clip, fresh)

    def after_clip(self, params: list[Tensor], total: Tensor | None, max_norm: Any) -> None:
        if self._unseen is not None:
            return
        tracked = self.guard.call(CLIP, self._owner_of, params)
        if tracked is None:
            return
        recorder = tracked.recorder
        exact = len(params) == len(recorder.params) and params[0] is recorder.params[0]
        if exact and isinstance(total, Tensor) and isinstance(max_norm, int | float):
            self.guard.call(CLIP, recorder.after_clip, total, float(max_norm))
        else:  # clip_grad_value_, another norm, a subset of the tensors: measured right now
            self.guard.call(CLIP, recorder.after_clip, None, None)

    # -- optimizer hooks (global: nothing is stored on the optimizer) ---------------------------

    def pre_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> Any:
        if interception.is_suspended() or tracing() or not self.guard.active(CAPTURE):
            return None
        outer = self._stepping
        if outer is not None and outer is not optimizer and _same_parameters(outer, optimizer):
            # a wrapper's inner optimizer (Lookahead, SAM.step): the wrapper's step is the
            # script's, and the one recorded
            self._inner.add(id(optimizer))
            return None
        self._stepping = optimizer
        self.closure_done = False  # a step that raised after its closure left it set
        if optimizer is self._unseen:  # its hooks run after all: captured as usual again
            self._unseen = self._tentative = None
        # args = (optimizer, *step's arguments): torch passes ``self`` along
        closure = kwargs.get("closure") if "closure" in kwargs else (args[1:2] or [None])[0]
        if callable(closure):  # capture once the closure has produced this step's gradients
            wrapped = self._after_closure(optimizer, closure)
            if "closure" in kwargs:
                return args, {**kwargs, "closure": wrapped}
            return (args[0], wrapped, *args[2:]), kwargs
        scale = None
        if self._scaler_step is not None and self._scaler_step[1] is optimizer:
            self._scaler_step[2] = True
            scaler = self._scaler_step[0]
            scale = scaler._get_scale_async() if _scaler_enabled(scaler) else None
        self.guard.call(CAPTURE, self._capture, optimizer, scale)
        return None

    def post_step(
        self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any, skipped: bool = False
    ) -> None:
        if interception.is_suspended() or tracing():
            return
        if id(optimizer) in self._inner:
            self._inner.discard(id(optimizer))
            return
        if optimizer is self._stepping:
            self._stepping = None
        self.closure_done = False
        tracked = self.tracking.roles.by_optimizer.get(optimizer)
        if tracked is None or not self.guard.active(CAPTURE):
            return
        info = self._info(tracked, skipped, optimizer)
        self.guard.call(CAPTURE, tracked.recorder.after_update, info, not skipped)
        self.tracking.roles.stepped(tracked)
        if tracked.primary:
            self._end_step(optimizer)

    def finish(self) -> None:
        """At close: the last unseen step or the update applied after the last manual-update
        step, then every row."""
        self.settle()
        manual = self.tracking.manual
        if manual is not None:
            self.guard.call(CAPTURE, lambda: manual.recorder.final_update(self._info(manual)))
        for tracked in self.tracking.all():
            self.guard.call(CAPTURE, tracked.recorder.flush)

    # -- helpers ---------------------------------------------------------------------------------

    def _after_closure(
        self, optimizer: torch.optim.Optimizer, closure: Callable[..., Any]
    ) -> Callable[..., Any]:
        before = self.tracking.param_versions()

        def closure_then_capture(*args: Any, **kwargs: Any) -> Any:
            result = closure(*args, **kwargs)
            if not self.closure_done:
                # SAM's step(closure) moves the weights to its ascent point before calling the
                # closure: θ and Δθ read now would be at that point, not the step's (LBFGS
                # calls it first at the step's weights). Those norms are left out, not wrong.
                at_start = self.tracking.param_versions() == before
                self.guard.call(CAPTURE, self._capture, optimizer, None, at_start)
                self.closure_done = True
            return result

        return closure_then_capture

    def _capture(
        self, optimizer: torch.optim.Optimizer, scale: Tensor | None, weights: bool = True
    ) -> None:
        """Read this step's row before ``optimizer`` updates; ``weights=False``: the weights are
        not the step's starting point now (no θ or Δθ norms)."""
        tracking = self.tracking
        if tracking.discovery.enabled and tracking.roles.all:  # a step after the first
            tracking.settle_discovery()  # (off before any forward if the new owner was called)
        tracked = tracking.tracked_for(optimizer)
        if tracked is None:
            return
        self.step = tracking.roles.decide(optimizer, tracked, self.step)
        tracking.follow(optimizer, tracked)  # parameters unfrozen or added since its last step
        loss = self._take_loss()  # what was backpropagated for this optimizer's step
        tracked.has_loss = loss is not None
        probe_next = tracked.primary and self.due(self.step)  # a probe reads this step's Δθ
        tracked.recorder.before_update(
            loss,
            grad_scale=getattr(optimizer, "grad_scale", None),
            skipped=getattr(optimizer, "found_inf", None),
            amp_scale=scale,
            sample=(probe_next or self._sampled(tracked)) and weights,
            step=self.step,
            primary=tracked.primary,
            optimizer=optimizer,
            keep_update=probe_next and weights,
        )

    def _capture_manual(self) -> None:
        manual = self.tracking.track_manual()
        if manual is None:
            return
        loss = self._take_loss()
        manual.has_loss = loss is not None
        manual.recorder.before_update(loss, step=self.step)
        manual.recorder.after_update(self._info(manual))
        self._end_step(None)

    def settle(self) -> None:
        """At close (no graph of the script's is live): the pending row of an unseen step is
        committed if the weights moved since it was read."""
        if self._tentative is not None and self.tracking.param_versions() != self._tentative:
            self.guard.call(CAPTURE, self._commit_unseen, False)

    def _capture_unseen(self, optimizer: torch.optim.Optimizer) -> None:
        """End of a backward while ``optimizer`` steps unseen: read the row the step about to
        come would apply (gradients, and θ on sampled steps), pending until the weights move;
        a further backward before that (accumulation) reads it again."""
        loss = self._loss
        self._capture(optimizer, None)
        self._loss = loss  # accumulation: the next backward's loss adds to it
        self._tentative = self.tracking.param_versions()
        self._tentative_lrs = tuple(learning_rate(g.get("lr")) for g in optimizer.param_groups)

    def _commit_unseen(self, defer: bool = True) -> None:
        """The weights moved since the pending row was read: that step was applied. Called
        at the next backward, what follows a step (probes) waits for its end (``defer``)."""
        optimizer, self._tentative = self._unseen, None
        tracked = self.tracking.roles.by_optimizer.get(optimizer) if optimizer else None
        if tracked is None:
            return
        info = self._info(tracked)
        info.lrs = self._tentative_lrs
        tracked.recorder.after_update(info)
        self.tracking.roles.stepped(tracked)
        if tracked.primary:
            self._end_step(optimizer, defer=defer)

    def _end_step(self, optimizer: torch.optim.Optimizer | None, defer: bool = False) -> None:
        self.step += 1
        self._scaled = None
        if defer and optimizer is not None:
            self._end_deferred = [optimizer]
        else:
            self.on_end(optimizer)
        self._last_end = time.perf_counter()  # a probe's time is not the next step's

    def _sampled(self, tracked: Tracked) -> bool:
        """Whether this step reads parameter and update norms on the ``param_every`` schedule
        (a step a probe follows is sampled too: it needs Δθ)."""
        steps = self.step if tracked.primary else tracked.steps
        return steps % self.param_every == 0

    def _take_loss(self) -> Tensor | None:
        loss, self._loss = self._loss, None
        return loss

    def _owner_of(self, params: list[Tensor]) -> Tracked | None:
        """The recorded optimizer whose parameters are being clipped (tracked from now on)."""
        if not params or not self.guard.active(CAPTURE):
            return None
        return self.tracking.owner_of(params)

    def _info(self, tracked: Tracked, skipped: bool = False, optimizer: Any = None) -> StepInfo:
        now = time.perf_counter()
        lrs: tuple[Any, ...] = ()
        if optimizer is not None:
            lrs = tuple(learning_rate(g.get("lr")) for g in optimizer.param_groups)
        primary = tracked.primary
        samples, tokens = self.calls.take() if primary else (0, 0)
        return StepInfo(
            step=self.step if primary else tracked.steps,
            wall_time=time.time() - self._wall0,
            step_time=now - self._last_end if self.step > 0 and primary else None,
            samples=samples,
            tokens=tokens,
            lrs=lrs,
            has_loss=tracked.has_loss,
            skipped=skipped,
            primary=primary,
        )


def _same_parameters(outer: torch.optim.Optimizer, inner: torch.optim.Optimizer) -> bool:
    """``inner`` steps the parameters ``outer`` does (a wrapper optimizer around its base)."""
    if inner.param_groups is outer.param_groups:
        return True
    try:
        return inner.param_groups[0]["params"][0] is outer.param_groups[0]["params"][0]
    except (IndexError, KeyError, TypeError):
        return False


def _scaler_enabled(scaler: Any) -> bool:
    """``GradScaler(enabled=False)`` has no scale to read (nanoGPT on CPU or in bf16)."""
    is_enabled = getattr(scaler, "is_enabled", None)
    return bool(is_enabled()) if callable(is_enabled) else bool(getattr(scaler, "_enabled", True))
