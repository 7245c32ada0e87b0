"""Evaluation loss and accuracy from the loss calls the script already makes.

A loss call made with gradients off (``torch.no_grad()``, ``torch.inference_mode()``) is an
evaluation call: a training loss needs gradients, and HF Trainer, Lightning, nanoGPT and the
PyTorch examples all evaluate under one of the two. A call with gradients on after a forward of
a model in eval mode (``model.eval()`` without ``no_grad``, a common slip) is *held*
(:meth:`EvalMetrics.hold`): a model kept in eval mode may be the one training, so it counts
only if no backward comes before the next top-level model call, optimizer step or close
(:meth:`EvalMetrics.settle`; a backward calls :meth:`EvalMetrics.drop_held`). gradlens's own
calls (probes) are never seen, nor a loss computed inside a ``torch.compile``'d forward.

Between two optimizer steps the calls are summed on their device, without a host sync: the
loss times the number its mean divides by (the targets not equal to ``ignore_index``, weighted
by the class ``weight`` if given; else the elements), that number, and for classification
(integer class targets) the argmax predictions equal to the target. At the next optimizer step
(or at close) they become ``scalars`` rows at the step of the last optimizer step before the
evaluation (0 before the first):

- ``eval_loss``: the mean over every element evaluated, as one batch of all of them would give
  it. A ``reduction='sum'`` call adds its sum and its element count, so the PyTorch examples'
  ``test_loss += F.nll_loss(output, target, reduction='sum')`` over the test set, divided by
  its size, is ``eval_loss``;
- ``eval_accuracy``: the fraction of argmax predictions equal to the target (classification);
- ``eval_samples``: the elements averaged (examples; tokens of a flattened language-model loss),
  ``ignore_index`` targets left out.

``index`` is the loader phase: a new phase begins when a ``DataLoader`` iterator is created
after evaluation calls were seen since the last step, so a validation loader then a test loader
give index 0 and 1. A script without DataLoaders (nanoGPT's ``get_batch``) has one phase per
evaluation: what it evaluates between two steps is averaged together. In a multi-process run
the rows are rank 0's evaluation.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import _reduction

from gradlens.capture.host_copy import copy_to_host
from gradlens.store.writer import Sink

__all__ = ["METRICS", "EvalMetrics", "eval_term"]

METRICS = ("eval_loss", "eval_accuracy", "eval_samples")

Number = Tensor | float | int

_CLASSIFIERS = ("cross_entropy", "nll_loss")
_WEIGHTED_MEAN = ("mse_loss", "l1_loss")  # 'mean' divides by weight.sum() (huber: numel)
_signatures: dict[str, inspect.Signature] = {}


class EvalMetrics:
    """Per loader phase, the sums of the evaluation calls since the last flush (device tensors).

    Example:
        >>> rows = []
        >>> metrics = EvalMetrics(lambda job: rows.append(job()))
        >>> with torch.no_grad():
        ...     loss = F.cross_entropy(torch.tensor([[2.0, 0.0]]), torch.tensor([0]))
        >>> metrics.observe("cross_entropy", (torch.tensor([[2.0, 0.0]]), torch.tensor([0])),
        ...                 {}, loss, step=3)
        >>> metrics.flush()
        >>> rows[0]["scalars"]["metric"]
        ['eval_loss', 'eval_accuracy', 'eval_samples']
    """

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self._step = 0
        self._phases: list[Tensor] = []  # one sum vector (see eval_term) per loader phase
        self._next_phase = False
        self._held: list[tuple[Tensor, int]] = []  # gradients on: evaluations unless backward

    def hold(
        self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], value: Any, step: int
    ) -> None:
        """A loss call that kept gradients on after an eval-mode forward: an evaluation
        unless the script backpropagates it before :meth:`settle`."""
        with torch.no_grad():
            term = eval_term(name, args, kwargs, value)
        if term is not None:
            self._held.append((term, step))

    @property
    def holding(self) -> bool:
        return bool(self._held)

    def drop_held(self) -> None:
        """A backward: the held calls were the training loss (a model trained in eval mode)."""
        self._held.clear()

    def settle(self) -> None:
        """No backward came: the held calls were evaluations."""
        held, self._held = self._held, []
        for term, step in held:
            self._add(term, step)

    def observe(
        self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], value: Any, step: int
    ) -> None:
        """Add one evaluation loss call (``value``: what it returned) made after ``step``."""
        term = eval_term(name, args, kwargs, value)
        if term is not None:
            self._add(term, step)

    def _add(self, term: Tensor, step: int) -> None:
        if not self._phases:
            self._step = step
        if self._next_phase or not self._phases:
            self._phases.append(term)
            self._next_phase = False
        else:  # out of place: a sum made under inference_mode cannot be updated outside it
            self._phases[-1] = self._phases[-1] + term.to(self._phases[-1].device)

    def loader_started(self) -> None:
        """A DataLoader iterator was created: later calls start a new phase, if any were seen."""
        self.settle()  # the last held call belongs to the phase that ends
        self._next_phase = bool(self._phases)

    def flush(self) -> None:
        """Hand the phases seen so far to the writer (one copy to the host, no sync)."""
        self.settle()
        if not self._phases:
            return
        phases, step = self._phases, self._step
        self._phases, self._next_phase = [], False
        values = copy_to_host(phases)
        self.sink(lambda: {"scalars": _rows(step, values())})


def eval_term(
    name: str, args: tuple[Any, ...], kwargs: dict[str, Any], value: Any
) -> Tensor | None:
    """``[loss sum, weight, samples, correct, classified]`` of one loss call that returned
    ``value``, on its device; ``None`` for a call that cannot be read (it is left out).

    ``loss sum / weight`` is the call's mean whatever its reduction; ``correct`` and
    ``classified`` are 0 unless the targets are class indices."""
    if not isinstance(value, Tensor) or not value.is_floating_point():
        return None
    call = _bind(name, args, kwargs)
    if call is None or not isinstance(call["input"], Tensor):
        return None
    if not isinstance(call["target"], Tensor):
        return None
    reduction = _reduction_of(call)
    counts = _counts(name, call, reduction)
    if counts is None or reduction not in ("mean", "batchmean", "sum", "none"):
        return None
    device = value.device
    dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    loss = value.detach().to(dtype)
    weight = counts[0]
    loss_sum = loss.sum() if reduction in ("sum", "none") else _times(loss, weight)
    return torch.stack(
        [
            p.to(device, dtype)
            if isinstance(p, Tensor)
            else torch.full((), p, dtype=dtype, device=device)
            for p in (loss_sum, *counts)
        ]
    )


# -- helpers -------------------------------------------------------------------------------------


def _bind(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """The call's arguments by name, defaults filled in (``None`` if they do not bind)."""
    signature = _signatures.get(name)
    if signature is None:
        signature = _signatures[name] = inspect.signature(getattr(F, name))
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError:
        return None
    bound.apply_defaults()
    return dict(bound.arguments)


def _reduction_of(call: dict[str, Any]) -> str:
    size_average, reduce = call.get("size_average"), call.get("reduce")
    if size_average is not None or reduce is not None:  # the deprecated pair decides
        return str(_reduction.legacy_get_string(size_average, reduce, emit_warning=False))
    return str(call["reduction"])


def _class_targets(logits: Tensor, target: Tensor) -> bool:
    """Class indices: integer targets with the logits' shape less the class dimension."""
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        return False
    return target.dim() == max(logits.dim() - 1, 0)


def _counts(
    name: str, call: dict[str, Any], reduction: str
) -> tuple[Number, Number, Number, Number] | None:
    """``(weight, samples, correct, classified)``: what the call's mean divides by, the elements
    it averages, and its correct argmax predictions out of the class targets it has."""
    logits, target = call["input"], call["target"]
    if name in _CLASSIFIERS and _class_targets(logits, target):
        valid = target != call["ignore_index"]
        samples = valid.sum()
        weight = samples
        if call["weight"] is not None:  # a weighted mean divides by the targets' weights
            weight = (call["weight"][torch.where(valid, target, 0)] * valid).sum()
        predicted = logits.argmax(1 if logits.dim() > 1 else 0)
        return weight, samples, ((predicted == target) & valid).sum(), samples
    if name in _CLASSIFIERS:  # class probabilities: one element per position, no accuracy
        if name != "cross_entropy" or target.shape != logits.shape:
            return None
        positions = logits.numel() // max(logits.shape[1 if logits.dim() > 1 else 0], 1)
        return positions, positions, 0, 0
    if reduction == "batchmean":
        rows = logits.shape[0] if logits.dim() > 0 else 1
        return rows, rows, 0, 0
    elements = torch.broadcast_shapes(logits.shape, target.shape).numel()
    if name in _WEIGHTED_MEAN and call.get("weight") is not None:
        return call["weight"].sum(), elements, 0, 0
    return elements, elements, 0, 0


def _times(mean: Tensor, weight: Number) -> Number:
    """``mean × weight``, 0 when nothing was averaged (a mean over no element is NaN)."""
    if isinstance(weight, Tensor):
        return torch.where(weight > 0, mean * weight, 0.0)
    return mean * weight if weight > 0 else 0.0


def _rows(step: int, sums: list[list[float]]) -> dict[str, list[Any]]:
    metric: list[str] = []
    index: list[int] = []
    value: list[float] = []
    for phase, (loss, weight, samples, correct, classified) in enumerate(sums):
        row = {
            "eval_loss": loss / weight if weight > 0 else None,
            "eval_accuracy": correct / classified if classified > 0 else None,
            "eval_samples": samples,
        }
        for name, number in row.items():
            if number is not None:
                metric.append(name)
                index.append(phase)
                value.append(number)
    return {"step": [step] * len(metric), "metric": metric, "index": index, "value": value}
