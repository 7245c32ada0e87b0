"""The norm signal: per-tensor gradient, parameter and update norms, non-finite entries and
gradient clipping, with a few fused ``_foreach`` kernels per step and no host sync."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch
from torch import Tensor

from gradlens.capture.replay import NormReplay, graphs_enabled
from gradlens.capture.signals import Slot, StepSignal, StepView, as_slot
from gradlens.capture.updates import group_indices, optimizer_update, supported
from gradlens.functional.norms import NormPlan, nonfinite_counts, tensor_norms
from gradlens.instrument.distributed import is_sharded, local

__all__ = ["UPDATE_SOURCES", "NormSignal"]

# Where ‖Δθ‖ comes from on a sampled step: "copy" (−θ kept from the pre-step to the post-step:
# 3 ops, fastest; a model-sized temporary over the optimizer step) or "optimizer" (rebuilt from
# the optimizer's post-step state for SGD/Adam/AdamW: ~10 ops, no copy over the step).
UPDATE_SOURCES = ("copy", "optimizer")


class NormSignal(StepSignal):
    """‖g‖, ‖θ‖, ‖Δθ‖ and non-finite entries of each tensor; the clipping a step applied.

    ``grad_norm`` is the gradient the model produced: a clipping call seen during the step
    (:meth:`before_clip`, :meth:`after_clip`) keeps the norms from before it and adds
    ``grad_norm_clipped``/``clip_coef``. ``‖θ‖`` and ``‖Δθ‖`` are read on sampled steps only
    (``StepView.sample``). ``‖Δθ‖`` is read off the optimizer's state after the step where the
    update is exactly known (SGD, Adam, AdamW: ``capture.updates``); otherwise a copy of the
    parameters is taken at the pre-step of a sampled step and freed at its post-step (kept until
    the next step only when ``StepView.keep_update`` says a probe wants the update). With
    ``update_lag=1`` (manual updates) the update is the change since the previous step: that
    copy lives for the whole run.
    """

    slots = (
        Slot("grad_norm", per_tensor=True, reduce="norm"),
        Slot("param_norm", per_tensor=True, reduce="norm"),
        Slot("update_norm", per_tensor=True, reduce="norm"),
        Slot("nonfinite", per_tensor=True, reduce="count"),
        Slot("grad_norm_clipped"),
        Slot("clip_coef"),
    )
    # On the CPU, where reading a number is free, count non-finite entries on a step whose
    # norms are not finite; elsewhere (and with this off) flag them from the norms alone.
    CPU_COUNTS = True

    def __init__(
        self,
        params: Sequence[Tensor],
        device: torch.device,
        *,
        update_lag: int = 0,
        track_updates: bool = True,
        squared: bool = False,
        updates_from: str = "copy",
    ) -> None:
        if updates_from not in UPDATE_SOURCES:
            raise ValueError(f"updates_from must be one of {UPDATE_SOURCES}, got {updates_from!r}")
        self.updates_from = updates_from
        self.params = list(params)
        self.device = device
        self.update_lag = update_lag
        self.track_updates = track_updates
        self.squared = squared  # multi-process: squared norms, summed over ranks
        self.sampled = True  # the step being recorded also read parameter/update norms
        self._saved: list[Tensor] | None = None  # −θ before the step (copy path)
        self._delta: list[Tensor] | None = None  # Δθ of the last step, kept for probes
        self._from_state: Any = None  # the optimizer whose state gives this step's Δθ
        self._groups: tuple[Any, tuple[int, ...], list[int] | None] | None = None
        self._keep = True  # keep this step's Δθ for last_update()
        self._applied = True
        self._present: dict[tuple[int, ...], Tensor] = {}
        self._preclip: Tensor | None = None  # gradient norms before a clipping call
        self._clip_coef: Tensor | None = None
        self._clipped: Tensor | None = None  # global gradient norm right after the last clip
        self._reclipped = False  # a second clipping call this step: measure after it
        n, f32 = len(self.params), torch.float32
        self._zeros = torch.zeros(n, dtype=f32, device=device)
        self._nans = torch.full((n,), math.nan, dtype=f32, device=device)
        self._cpu_nonfinite = self.CPU_COUNTS and device.type == "cpu"
        # FSDP2 shards are DTensors: the foreach math runs on their local tensors.
        self.sharded = is_sharded(self.params)
        self._norms = NormPlan(self._values())
        self._norms_both = NormPlan([*self._values(), *self._values()])
        # Opt-in: an unsampled step's gradient norms as one CUDA-graph replay (capture.replay).
        self._replay = (
            NormReplay(self._norms)
            if graphs_enabled(device) and self._norms.simple and not self.sharded
            else None
        )

    # -- StepSignal ------------------------------------------------------------------------------

    def before(self, view: StepView) -> Mapping[str, Tensor]:
        sample = view.sample or bool(self.update_lag)
        gnorm, pnorm, nonfinite = self._grad_norms(with_params=sample, replay=self._replay)
        out: dict[str, Tensor] = {}
        if self._preclip is not None:
            gnorm, out["grad_norm_clipped"], out["clip_coef"] = self._clip_slots(gnorm)
        if view.grad_scale is not None:
            gnorm = gnorm / as_slot(view.grad_scale, self.device)
        if self.squared:
            gnorm, pnorm = gnorm * gnorm, pnorm * pnorm
        out.update(grad_norm=gnorm, param_norm=pnorm, nonfinite=nonfinite)
        self._delta = self._from_state = None
        if not self.update_lag:
            self._saved = None  # a step that raised after its pre-step left its copy
        if self.update_lag:
            out["update_norm"] = self._update_since_saved()
            self._save()
        elif self.track_updates and sample:
            self._from_state = self._state_source(view)
            if self._from_state is None:
                self._saved = list(torch._foreach_neg(self._values()))  # −θ: exact, one op
            out["update_norm"] = self._zeros  # what a step GradScaler skips moved
        self.sampled = sample
        self._keep = view.keep_update
        return out

    def after(self, view: StepView) -> Mapping[str, Tensor]:
        self._applied = view.applied
        if view.tail:  # manual updates: the update applied after the last seen step
            if not self.update_lag or self._saved is None:
                return {}
            return {"update_norm": self._update_since_saved()}
        if not self.track_updates or not self.sampled or self.update_lag:
            return {}
        delta = self._step_update() if view.applied else None
        self._saved = None  # the copy path's copy lives for one step only
        self._delta = delta if self._keep else None
        if delta is None:  # skipped: nothing moved (before()'s zeros); else not measured
            return {"update_norm": self._nans} if view.applied else {}
        norms = self._norms(delta)
        return {"update_norm": norms * norms if self.squared else norms}

    # -- clipping --------------------------------------------------------------------------------

    def before_clip(self) -> None:
        """A clipping call is about to change the gradients: keep their norms as the step's
        ``grad_norm`` (the model's own gradient). A second call in one step keeps the first."""
        self._clip_coef = self._clipped = None
        if self.sharded:
            return
        if self._preclip is not None:
            self._reclipped = True  # the coefficient is then read off the clipped gradients
            return
        self._preclip = self._grad_norms(with_params=False)[0]

    def forget_clip(self) -> None:
        """The clipping calls so far were on gradients no step applied (the script skipped the
        step after clipping: a spike guard, ``error_if_nonfinite``): forget them."""
        self._preclip = self._clip_coef = self._clipped = None
        self._reclipped = False

    def after_clip(self, total: Tensor | None, max_norm: float | None) -> None:
        """A clipping call ended. ``clip_grad_norm_`` over exactly these parameters returned
        ``total``: the factor it applied is ``min(1, max_norm / (total + 1e-6))`` (no need to
        read the gradients again). Otherwise (``total`` None: ``clip_grad_value_``, another
        norm, a subset of the tensors, a second call) the gradients are measured now, before
        anything else (noise, a GradScaler) changes them."""
        if self._preclip is None:
            return
        if total is None or max_norm is None or self._reclipped:
            grads, _ = self._grads()
            norms = tensor_norms(grads, self.device) if grads else self._zeros
            self._clipped = norms.square().sum().sqrt().reshape(1)
            return
        total = total.detach().to(self.device, torch.float32, non_blocking=True).reshape(1)
        self._clip_coef = (float(max_norm) / (total + 1e-6)).clamp(max=1.0)

    # -- for probes ------------------------------------------------------------------------------

    def last_update(self) -> list[Tensor] | None:
        """Δθ of the step just applied (optimizer mode, between its post-step and the next
        step), else None: manual updates, ``track_updates=False``, an unsampled step, or a step
        whose pre-step view did not ask to keep it (``StepView.keep_update``)."""
        if self.update_lag or not self.track_updates or not self.sampled:
            return None
        if self._delta is None and self._keep and not self._applied:
            return [torch.zeros_like(p) for p in self._values()]  # skipped: nothing moved
        return self._delta

    # -- helpers ---------------------------------------------------------------------------------

    def _grad_norms(
        self, with_params: bool, replay: NormReplay | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(per-tensor gradient norms, parameter norms or NaN, non-finite slots); a tensor
        without a gradient this step reads 0. Gradients and parameters go through one fused
        norm call when every gradient is there. With ``replay`` the gradient norms may be its
        graph's buffer: the caller consumes them within the step."""
        grads, missing = self._grads()
        pnorm = self._nans
        if not missing:
            if with_params:
                both = self._norms_both([*grads, *self._values()])
                gnorm, pnorm = both[: len(grads)], both[len(grads) :]
            else:
                gnorm = self._norms(grads) if replay is None else replay(grads)
            return gnorm, pnorm, self._nonfinite(grads, gnorm)
        gnorm = tensor_norms(grads, self.device) if grads else self._zeros
        nonfinite = self._expand(self._nonfinite(grads, gnorm), missing)
        if with_params:
            pnorm = self._norms(self._values())
        return self._expand(gnorm, missing), pnorm, nonfinite

    def _clip_slots(self, final: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(pre-clip norms, norm after clipping, coefficient) of a step with a clipping call."""
        pre, coef, clipped = self._preclip, self._clip_coef, self._clipped
        self._preclip = self._clip_coef = self._clipped = None
        self._reclipped = False
        assert pre is not None
        pre_total = pre.square().sum().sqrt().reshape(1)
        if coef is not None:
            clipped = pre_total * coef
        else:  # measured after the clip (clip_grad_value_, a subset, several calls)
            if clipped is None:  # (no after_clip came: the gradients at the step)
                clipped = final.square().sum().sqrt().reshape(1)
            coef = clipped / pre_total
        return pre, clipped, coef

    def _grads(self) -> tuple[list[Tensor], list[int]]:
        """(the gradients there are, positions of the parameters without one). Two list
        comprehensions: ``None in grads`` would call ``Tensor.__eq__`` on every gradient."""
        all_grads = [p.grad for p in self.params]
        missing = [i for i, g in enumerate(all_grads) if g is None]
        grads = [g for g in all_grads if g is not None] if missing else cast(Any, all_grads)
        if self.sharded:
            grads = [local(g) for g in grads]
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
            return self._zeros[:0]
        n = len(grads)
        if not self._cpu_nonfinite:  # (a slice is a dispatch: none when every tensor has one)
            return self._nans if n == len(self._nans) else self._nans[:n]
        if math.isfinite(gnorm.sum().item()):  # a sum of norms is finite iff each is
            return self._zeros if n == len(self._zeros) else self._zeros[:n]
        return nonfinite_counts(grads, self.device)

    def _state_source(self, view: StepView) -> Any:
        """The optimizer whose post-step state gives this step's Δθ exactly, else None (the
        copy path: other optimizers, AMP steps the optimizer may skip on the device, shards)."""
        optimizer = view.optimizer
        if self.updates_from != "optimizer" or optimizer is None or self.sharded:
            return None
        if view.grad_scale is not None or view.skipped is not None:
            return None
        key = tuple(id(g["params"]) for g in optimizer.param_groups)
        if self._groups is None or self._groups[0] is not optimizer or self._groups[1] != key:
            self._groups = (optimizer, key, group_indices(optimizer, self.params))
        if self._groups[2] is None or not supported(optimizer):
            return None
        return optimizer

    def _step_update(self) -> list[Tensor] | None:
        """Δθ of the step just applied: from the optimizer's state, else from the copy."""
        if self._from_state is not None:
            assert self._groups is not None and self._groups[2] is not None
            missing = self._grads()[1]
            if not missing:
                return optimizer_update(self._from_state, self.params, self._groups[2])
            absent = set(missing)
            present = [i for i in range(len(self.params)) if i not in absent]
            indices = self._groups[2]
            part = optimizer_update(
                self._from_state, [self.params[i] for i in present], [indices[i] for i in present]
            )
            if part is None:
                return None
            moved = dict(zip(present, part, strict=True))  # no gradient: not moved
            return [
                moved[i] if i in moved else torch.zeros_like(p) for i, p in enumerate(self.params)
            ]
        if self._saved is None:
            return None
        torch._foreach_add_(self._saved, self._values())  # −θ_before + θ_after
        return self._saved

    def _save(self) -> None:
        """Manual updates: keep θ for the next step (one buffer, reused every step)."""
        if self._saved is None:
            self._saved = [p.detach().clone() for p in self._values()]
        else:
            torch._foreach_copy_(self._saved, self._values())

    def _update_since_saved(self) -> Tensor:
        """Manual updates: the norms of θ_saved − θ (the buffer is refreshed right after)."""
        if self._saved is None:
            return self._zeros
        torch._foreach_sub_(self._saved, self._values())
        norms = self._norms(self._saved)
        return norms * norms if self.squared else norms

    def _values(self) -> list[Tensor]:
        """The parameters' values: local shards for DTensors (FSDP2), else the parameters."""
        if not self.sharded:
            return self.params
        return [local(p.detach()) for p in self.params]
