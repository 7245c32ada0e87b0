"""What the watched models' top-level training calls tell: samples and tokens per step, the
batch size, the batches probes replay, and a loss returned by a forward (probes replay it: the
probe set checks that the script backpropagates it, not it plus terms added after forward)."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from gradlens.instrument import interception
from gradlens.instrument.guard import Guard
from gradlens.instrument.probe_set import ProbeSet, batch_dim_of, batch_size_of

__all__ = ["ModelCalls"]

FEATURE = "model calls"


class ModelCalls:
    """Called around each call of a watched model (``instrument.roots``); nested calls and
    gradlens's own (probes, under ``interception.suspended``) are not counted."""

    def __init__(
        self,
        guard: Guard,
        probe_set: ProbeSet,
        on_call: Callable[[], None],
        on_compiled_loss: Callable[[], None],
    ) -> None:
        self.guard, self.probe_set = guard, probe_set
        self.on_call, self.on_compiled_loss = on_call, on_compiled_loss
        self.depth = 0  # > 0 while a watched model runs (a loss call is then inside forward)
        # The last top-level call was a training forward (train mode, gradients on): loss calls
        # after an evaluation forward run with gradients on (``model.eval()`` without
        # ``no_grad``) are not the training loop's. True until a watched model is called.
        self.training = True
        self.loss_seen = False  # a loss function was called during this forward
        self.batch_size: int | None = None  # the first training batch's, for meta.json
        self.samples = self.tokens = 0  # since the last optimizer step
        # (backward passes so far, line search running): set by the step capture
        self.progress: Callable[[], tuple[int, bool]] = lambda: (0, False)
        self._counted: set[tuple[int, tuple[int, ...]]] = set()  # since the last backward
        self._counted_at = -1  # backward passes when _counted started
        self._batch_dims: weakref.WeakKeyDictionary[nn.Module, int] = weakref.WeakKeyDictionary()

    def take(self) -> tuple[int, int]:
        """(samples, tokens) seen since the last call; the counts restart."""
        out = self.samples, self.tokens
        self.samples = self.tokens = 0
        return out

    def before(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        self.on_call()
        self.depth += 1
        if self.depth > 1 or interception.is_suspended():
            return
        self.loss_seen = False
        self.training = module.training and torch.is_grad_enabled()
        if self.training and self.guard.active(FEATURE):
            self.guard.call(FEATURE, self._count_and_keep, module, args, kwargs)

    def after(self, module: nn.Module, output: Any) -> None:
        self.depth = max(0, self.depth - 1)
        if self.depth or output is None or self.probe_set.full:
            return
        if module.training and torch.is_grad_enabled() and not interception.is_suspended():
            self.guard.call(FEATURE, self._returned, module, output)

    def _returned(self, module: nn.Module, output: Any) -> None:
        if not self.loss_seen:
            self._loss_from_output(module, output)
        self.probe_set.record_returned(module, output)

    def _count_and_keep(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        dim = self._batch_dims.get(module)
        if dim is None:  # once per model: which input dimension is the batch
            dim = self._batch_dims[module] = batch_dim_of(module)
        samples, tokens = batch_size_of(args, kwargs, dim)
        if self.batch_size is None and samples:
            self.batch_size = samples
        if self._new_batch(module, args, kwargs):
            self.samples += samples
            self.tokens += tokens
        if not self.probe_set.full:
            self.probe_set.record_forward(module, args, kwargs, samples)

    def _new_batch(self, module: nn.Module, args: Any, kwargs: Any) -> bool:
        """Whether this call brings new samples: not a repeat of the same module on an input of
        the same shape before the next backward (an ODE solver's stages, a shared encoder on
        two views of one batch), nor an LBFGS line search's re-evaluation. Micro-batches of
        gradient accumulation each have their backward, and count."""
        backwards, line_search = self.progress()
        if line_search:
            return False
        if backwards != self._counted_at:
            self._counted_at, self._counted = backwards, set()
        first = next((v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)), None)
        key = (id(module), tuple(first.shape) if first is not None else ())
        if key in self._counted:
            return False
        self._counted.add(key)
        return True

    def _loss_from_output(self, module: nn.Module, output: Any) -> None:
        """No loss call was seen during a forward that returned a loss: it was computed where
        gradlens does not look (inside a ``torch.compile``d graph, or by a loss gradlens does
        not intercept). Probes replay the module and read its returned loss."""
        if self.probe_set.record_output_loss(module, output) and hasattr(module, "_orig_mod"):
            self.on_compiled_loss()
