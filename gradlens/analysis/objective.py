"""The loss of a model on a fixed set of batches, as a function of its parameters.

Probes (Hessian, landscape, collapse) all need the same thing: evaluate the training loss on a
probe set, possibly at other parameter values, without changing training. An
:class:`Objective` holds the model, the batches and the train/eval mode, and
:meth:`Objective.isolated` guarantees that nothing observable by training changes: parameters,
gradients, train/eval flags, buffers (BatchNorm running statistics) and RNG states are restored
bit for bit, and gradlens's own interception is suspended.

Batches come from user data (``(inputs, target)`` pairs and a ``loss_fn(output, target)``), or
from batches recorded during ``watch`` (:func:`batches_from_probe_set`), replayed through the
same loss call the script made — also when the model computes its loss inside ``forward``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from gradlens.instrument import interception
from gradlens.instrument.probe_set import RETURNED, extract_loss

__all__ = [
    "MODES",
    "Batch",
    "Objective",
    "batches_from_data",
    "batches_from_probe_set",
    "extract_loss",
]

MODES = ("eval", "train")
LossFn = Callable[[Any, Any], Tensor]


@dataclass
class Batch:
    """One batch: ``model(*args, **kwargs)``, then ``loss_fn(output, target)`` if given.

    ``loss_fn=None`` means the model returns its loss (a scalar, ``(logits, loss)``, a dict
    with ``"loss"`` or an object with ``.loss``). ``size`` weights the batch in the mean.
    ``labels`` are the class targets the loss saw (also when it ran inside ``forward``), for
    probes that need labels (neural collapse). ``classes`` is the number of classes in the
    logits the recorded loss call saw (``cross_entropy``/``nll_loss``), if known;
    ``loss_name`` that call's ``torch.nn.functional`` name (None: not known), and
    ``on_logits`` whether it consumed the output's first tensor (what probes take as logits).
    """

    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    target: Any = None
    loss_fn: LossFn | None = None
    size: int = 1
    labels: Any = None
    classes: int | None = None
    loss_name: str | None = None
    on_logits: bool = True


def _size(args: Sequence[Any], kwargs: Mapping[str, Any]) -> int:
    for value in (*args, *kwargs.values()):
        if isinstance(value, Tensor) and value.dim() > 0:
            return int(value.shape[0])
    return 1


def batches_from_data(data: Any, loss_fn: LossFn | None) -> list[Batch]:
    """``(x, y)``, ``[(x, y), ...]``, a DataLoader, or bare inputs with ``loss_fn=None``."""
    if isinstance(data, Mapping):
        raise ValueError("data is a mapping: pass (inputs, target) pairs, or a list of them")
    if isinstance(data, Tensor):
        data = [(data,)]
    elif isinstance(data, tuple) and data and isinstance(data[0], Tensor):
        data = [data]
    batches = []
    for item in data:
        if isinstance(item, Tensor):
            item = (item,)
        if loss_fn is None:
            args = tuple(item)
            batches.append(Batch(args, {}, None, None, _size(args, {})))
        else:
            *inputs, target = item
            args = tuple(inputs)
            batches.append(Batch(args, {}, target, loss_fn, _size(args, {}), target))
    if not batches:
        raise ValueError("data holds no batch")
    return batches


def batches_from_probe_set(probe_set: Any) -> list[Batch]:
    """Batches recorded by ``watch`` (see ``instrument.probe_set``), replayable as recorded."""
    out = []
    for recorded in probe_set.batches:
        call = recorded.loss
        if call is None:
            continue
        size = recorded.batch_size or _size(recorded.args, recorded.kwargs)
        loss_fn = None if call.inside_forward else _replay(call)
        target = None if call.inside_forward else call.target
        name = None if call.name == RETURNED else call.name
        logits = call.on_first or not call.on_output  # a function of some output: maybe so
        args, kwargs = recorded.args, recorded.kwargs
        batch = Batch(
            args, kwargs, target, loss_fn, size, call.target, _classes(call), name, logits
        )
        out.append(batch)
    return out


def _classes(call: Any) -> int | None:
    """Number of classes in the logits of a ``cross_entropy``/``nll_loss`` call with class
    indices: dimension 1 of (N, C, d1, …), the only one of (C,)."""
    shape = call.input_shape
    target = call.target
    if call.name not in ("cross_entropy", "nll_loss") or not shape:
        return None
    if not isinstance(target, Tensor) or target.is_floating_point():
        return None  # class probabilities: no class index per sample
    return int(shape[1] if len(shape) > 1 else shape[0])


def _replay(call: Any) -> LossFn:
    """A loss_fn that calls the recorded ``F.<name>`` on the model output, reshaped as then."""
    function = getattr(F, call.name)
    shape = call.input_shape

    def loss_fn(output: Any, target: Any) -> Tensor:
        value = _matching_tensor(output, shape)
        return function(value.reshape(shape), target, *call.args, **call.kwargs)

    return loss_fn


def _matching_tensor(output: Any, shape: tuple[int, ...]) -> Tensor:
    numel = 1
    for n in shape:
        numel *= n
    items = (
        output.values()
        if isinstance(output, Mapping)
        else (output if isinstance(output, tuple | list) else [output])
    )
    for value in items:
        if isinstance(value, Tensor) and value.numel() == numel:
            return value
    raise ValueError(f"no model output matches the recorded loss input shape {shape}")


class Objective:
    """Weighted mean loss of ``model`` over ``batches``, in an explicit train/eval mode.

    Example:
        >>> obj = Objective(model, batches_from_data((x, y), F.cross_entropy))  # doctest: +SKIP
        >>> with obj.isolated():
        ...     loss = obj.loss()                       # at the current parameters
        ...     other = obj.loss({"fc.weight": w2})     # at other values (functional_call)
    """

    def __init__(self, model: nn.Module, batches: Sequence[Batch], mode: str = "eval") -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not batches:
            raise ValueError("an Objective needs at least one batch")
        self.model = model
        self.batches = list(batches)
        self.mode = mode
        self.total = sum(b.size for b in self.batches)
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in model.named_parameters() if p.requires_grad]
        self._draws: _RngState | None = None  # inside isolated(): every evaluation's RNG start

    @property
    def device(self) -> torch.device:
        return self.params[0].device if self.params else torch.device("cpu")

    def batch_loss(self, batch: Batch, params: Mapping[str, Tensor] | None = None) -> Tensor:
        """Loss of one batch, at ``params`` (name → tensor, others unchanged) if given.

        Inside :meth:`isolated` every evaluation starts from the same RNG state, so a forward
        that draws random numbers (a diffusion model's noise and timesteps, a VAE's sample,
        dropout in train mode) is one function of the parameters: the probes' differences
        and Hessian-vector products measure the weights, not new noise.
        """
        if self._draws is not None:
            self._draws.restore()
        if params is None:
            output = self.model(*batch.args, **batch.kwargs)
        else:
            output = functional_call(
                self.model, dict(params), batch.args, batch.kwargs, strict=False
            )
        if batch.loss_fn is None:
            return extract_loss(output)
        return batch.loss_fn(output, batch.target)

    def loss(self, params: Mapping[str, Tensor] | None = None) -> Tensor:
        """Size-weighted mean of the batch losses."""
        total: Tensor | None = None
        for batch in self.batches:
            part = self.batch_loss(batch, params) * (batch.size / self.total)
            total = part if total is None else total + part
        assert total is not None
        return total

    def weighted_batches(self) -> Iterator[tuple[Batch, float]]:
        for batch in self.batches:
            yield batch, batch.size / self.total

    @contextlib.contextmanager
    def isolated(self) -> Iterator[None]:
        """Run probe code without any effect on training (see the module docstring)."""
        with (
            restored_state(self.model),
            interception.suspended(),
            torch.enable_grad(),
            _requires_grad_inside_transforms(),
        ):
            self.model.train(self.mode == "train")
            self._draws = _RngState()
            try:
                yield
            finally:
                self._draws = None


@contextlib.contextmanager
def _requires_grad_inside_transforms() -> Iterator[None]:
    """Model hooks that call ``requires_grad_()`` on activations (Hugging Face's
    ``enable_input_require_grads`` for gradient checkpointing) raise inside ``torch.func``
    transforms; there the activations are already differentiated, so the call is a no-op."""
    original = Tensor.requires_grad_

    def requires_grad_(self: Tensor, requires_grad: bool = True) -> Tensor:
        try:
            return original(self, requires_grad)
        except RuntimeError as exc:
            if "functorch" not in str(exc):
                raise
            return self

    Tensor.requires_grad_ = requires_grad_  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        Tensor.requires_grad_ = original  # type: ignore[method-assign]


@contextlib.contextmanager
def restored_state(model: nn.Module) -> Iterator[None]:
    """Save and restore parameters, gradients, modes, buffers and RNG states of ``model``."""
    params = list(model.parameters())
    data = [p.detach().clone() for p in params]
    grads = [p.grad for p in params]
    modes = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    rng = _RngState()
    try:
        yield
    finally:
        with torch.no_grad():
            for p, saved in zip(params, data, strict=True):
                p.copy_(saved)
            for buffer, saved in buffers:
                buffer.copy_(saved)
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        for module, training in modes:
            module.training = training
        rng.restore()


class _RngState:
    """The global CPU and CUDA random number generators' states at creation."""

    def __init__(self) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)
