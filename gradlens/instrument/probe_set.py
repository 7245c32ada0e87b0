"""A bounded set of recorded training batches that probes can replay.

For the first ``capacity`` training forwards of a root module whose output a loss call
consumed, the inputs are copied (detached clones, taken at the loss call, so later in-place
changes by the data pipeline cannot alter them) together with that loss call: the loss
function, its targets and options, and whether it ran inside the model's ``forward`` (nanoGPT
style) or on its output. A forward no loss call follows (an RL agent acting, a script's own
loss formula) is not kept and costs no copy. Memory stays flat: nothing is kept after the set
is full. A new model trained in the same process (a sweep, k-fold) starts the set afresh
(``restart``).

While it records, it also checks that the recorded loss call is what the script trains on:
the backward that follows must reach the loss call's result through constant scaling
(``loss / accum``, GradScaler), casts, views and reductions of a scalar only, and be the only
backward before the next forward. Otherwise (``loss = F.mse_loss(...) + custom``, the sum of a
GAN's real and fake terms, one backward per task) the batch's ``whole`` is False: replaying
the loss call would measure a part of the training loss. When the loss comes from inside
``forward`` (nanoGPT's ``logits, loss = model(x, y)``, a Hugging Face output's ``.loss``, a
``torch.compile``d graph), probes replay the module and take the loss it returns; so the same
check follows that returned loss (``out.loss + 0.01 * l2`` is a part), never the loss call
inside forward (a forward returning ``ce + aux`` returns the objective). Once the set is full
nothing is watched any more.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_map

from gradlens.instrument import interception

__all__ = [
    "LossCall",
    "ProbeBatch",
    "ProbeSet",
    "batch_dim_of",
    "batch_size_of",
    "extract_loss",
]

# Keyword arguments a training loop passes that describe the whole accumulated step, not the
# batch: replaying them would rescale the probe's loss (Hugging Face ``Trainer`` with gradient
# accumulation passes the token count of all micro-batches).
STEP_KWARGS = ("num_items_in_batch",)
RETURNED = "returned by forward"  # LossCall.name of a loss the module returned
# Autograd nodes between a loss call's result and the backward root that keep it the whole
# objective (constant scaling, casts, views, reductions of a scalar); anything else — a sum
# with another term, a function of the loss — makes the loss call a part of it.
_SAME_OBJECTIVE = (
    "MulBackward",
    "DivBackward",
    "ToCopyBackward",
    "ViewBackward",
    "UnsafeViewBackward",
    "ReshapeAliasBackward",
    "SqueezeBackward",
    "UnsqueezeBackward",
    "ExpandBackward",
    "MeanBackward",
    "SumBackward",
    "CloneBackward",
    "AliasBackward",
)
_WALK_LIMIT = 64  # nodes followed from a backward root
_FORWARDS_WITHOUT_BACKWARD = 4  # a loss call not backpropagated by then is not checked


def _copy(value: Any) -> Any:
    return tree_map(lambda v: v.detach().clone() if isinstance(v, Tensor) else v, value)


@dataclass
class LossCall:
    """One call of a ``torch.nn.functional`` loss: everything but its first argument."""

    name: str
    input_shape: tuple[int, ...]
    target: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    inside_forward: bool
    # its input is the model's output up to views and casts (False: ``sigmoid(out)``,
    # ``out.gather(…)``, ``out[:, :-1]``, which a replay on the output would not compute)
    on_output: bool = True
    # its input is the first tensor of the model output (what probes take as the logits)
    on_first: bool = True

    @property
    def per_sample(self) -> bool:
        """``reduction="none"`` (or the legacy ``reduce=False``): one loss per sample, which
        the script reduces itself (a masked or weighted mean) — not an objective to replay."""
        return self.kwargs.get("reduction") == "none" or self.kwargs.get("reduce") is False


@dataclass
class ProbeBatch:
    """Inputs of one training forward of ``module``, and the loss call that followed.

    The module is held weakly: a model the script dropped (a sweep, k-fold) is freed, and its
    batches are forgotten."""

    owner: weakref.ref[nn.Module]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    loss: LossCall | None = None
    batch_size: int = 0
    # What probes replay (the loss call's result, or the loss forward returned) is all the
    # script backpropagated (None: not known)
    whole: bool | None = None
    _node: Any = field(default=None, repr=False, compare=False)  # that loss's grad_fn
    _backwards: int = field(default=0, repr=False, compare=False)
    _forwards: int = field(default=0, repr=False, compare=False)
    _outputs: list[Tensor] | None = field(default=None, repr=False, compare=False)

    @property
    def module(self) -> nn.Module | None:
        return self.owner()


class ProbeSet:
    """Keeps the first ``capacity`` training batches of each run."""

    def __init__(self, capacity: int = 2) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self.batches: list[ProbeBatch] = []
        self._open: ProbeBatch | None = None  # waiting for its loss call
        self._returning: ProbeBatch | None = None  # its forward has not returned yet
        self._checks: list[ProbeBatch] = []  # loss results waiting for the script's backward

    @property
    def full(self) -> bool:
        """No training forward needs recording (asked at every forward: one weakref look)."""
        waiting = self._open is not None or self._returning is not None or bool(self._checks)
        if self.batches and self.batches[-1].module is None:  # a model the script dropped
            self.batches = [b for b in self.batches if b.module is not None]
        return len(self.batches) >= self.capacity and not waiting

    def record_forward(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], batch_size: int
    ) -> None:
        """Called at a root module's training forward."""
        self._open = self._returning = None
        if self._checks:
            self._settle()
        if len(self.batches) >= self.capacity:
            return
        kwargs = {k: v for k, v in kwargs.items() if k not in STEP_KWARGS}
        # kept (and copied) only once a loss call consumes its output: see _keep
        batch = ProbeBatch(weakref.ref(_replayable(module)), args, kwargs, batch_size=batch_size)
        self._open = self._returning = batch

    def restart(self) -> None:
        """Forget the batches: the next training forwards are recorded (a new model)."""
        for batch in list(self._checks):
            self._done(batch)
        self.batches = []
        self._open = self._returning = None

    def _keep(self, batch: ProbeBatch) -> None:
        """A loss call consumed ``batch``'s output: copy its inputs now and keep it."""
        if any(b is batch for b in self.batches):
            return
        batch.args, batch.kwargs = _copy(batch.args), _copy(batch.kwargs)
        self.batches.append(batch)

    def record_loss(
        self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], inside_forward: bool
    ) -> None:
        """Called at a loss-function call; attaches it to the batch recorded last."""
        batch = self._open
        if batch is None or not args or not isinstance(args[0], Tensor):
            return
        target = args[1] if len(args) > 1 else kwargs.get("target")
        rest = args[2:] if len(args) > 2 else ()
        options = {k: v for k, v in kwargs.items() if k not in ("input", "target")}
        batch.loss = LossCall(
            name, tuple(args[0].shape), _copy(target), _copy(rest), _copy(options), inside_forward
        )
        if not inside_forward and batch._outputs is not None:
            batch.loss.on_output = _from_output(args[0], batch._outputs)
            batch.loss.on_first = _from_output(args[0], batch._outputs[:1])
        batch._outputs = None  # the script's tensors: not kept past its loss call
        self._keep(batch)
        self._open = None
        if not inside_forward:  # inside forward, probes replay the loss the model returns
            interception.request_loss_result(lambda result: self.record_loss_result(batch, result))

    def record_loss_result(self, batch: ProbeBatch, result: Any) -> None:
        """Probes replay ``result`` as ``batch``'s loss: check it at the next backward."""
        if not isinstance(result, Tensor) or result.numel() != 1 or result.grad_fn is None:
            return
        batch._node = result.grad_fn
        if not any(b is batch for b in self._checks):
            self._checks.append(batch)
        interception.watch_backward(self.record_backward)

    def record_backward(self, losses: list[Tensor]) -> None:
        """The script backpropagates ``losses`` (their sum): is it the recorded loss call?

        A batch's first backward decides: whole if it reaches its loss call's result. When
        another batch's loss is reached instead, this one was not backpropagated (not known);
        a second backward before the next forward (one backward per task) makes it partial.
        """
        reached = {id(b) for b in self._checks if len(losses) == 1 and _reaches(losses[0], b._node)}
        for batch in list(self._checks):
            if batch._backwards:
                batch.whole = False
            elif id(batch) in reached or not reached:
                batch.whole = id(batch) in reached
            else:
                self._done(batch)
                continue
            batch._backwards += 1

    def _settle(self) -> None:
        """At a forward: checks that saw their backward are done; others wait a little."""
        for batch in list(self._checks):
            batch._forwards += 1
            if batch._backwards or batch._forwards > _FORWARDS_WITHOUT_BACKWARD:
                self._done(batch)

    def _done(self, batch: ProbeBatch) -> None:
        batch._node = None  # the graph is the script's
        self._checks = [b for b in self._checks if b is not batch]
        if not self._checks:
            interception.unwatch_backward(self.record_backward)

    def record_output_loss(self, module: nn.Module, output: Any) -> bool:
        """The forward of the batch recorded last returned a loss that no intercepted loss
        call produced (e.g. computed inside a ``torch.compile``d graph): probes replay the
        module and read the loss from its output. True if the batch took it."""
        batch = self._open
        if batch is None or batch.module is not _replayable(module):
            return False
        try:
            extract_loss(output)
        except ValueError:
            return False
        batch.loss = LossCall(RETURNED, (), None, (), {}, inside_forward=True)
        self._keep(batch)
        # still open: a loss call on the output after forward (``(logits, aux)`` returned, the
        # script's ``F.cross_entropy(logits, y)``) is the loss and replaces this one
        return True

    def record_returned(self, module: nn.Module, output: Any) -> None:
        """The forward of the batch recorded last returned ``output``. If probes replay the
        loss it returns (a loss inside forward), check that loss at the next backward."""
        batch, self._returning = self._returning, None
        if batch is None or batch.module is not _replayable(module):
            return
        if batch.loss is None:  # the loss call comes after forward: is it on the output?
            batch._outputs = _tensors(output)
        if batch.loss is None or not batch.loss.inside_forward:
            return
        loss = _returned_loss(output)
        if loss is not None:
            self.record_loss_result(batch, loss)


def _reaches(root: Tensor, node: Any) -> bool:
    """``root`` is ``node``'s output up to constant scaling, casts, views and reductions."""
    return _walks_to(root, [node], _SAME_OBJECTIVE)


def _walks_to(value: Tensor, nodes: list[Any], passing: tuple[str, ...]) -> bool:
    """``value``'s autograd graph reaches one of ``nodes`` through single-input nodes whose
    names start with one of ``passing``."""
    current = value.grad_fn
    for _ in range(_WALK_LIMIT):
        if current is None:
            return False
        if any(current is n for n in nodes):
            return True
        if not current.name().startswith(passing):
            return False
        inputs = [n for n, _ in current.next_functions if n is not None]
        if len(inputs) != 1:
            return False
        current = inputs[0]
    return False


# Autograd nodes between a model output and a loss call's input that a replay of the loss on the
# output reproduces (it reshapes the output to the recorded input shape): views and casts.
_VIEWS = (
    "ViewBackward",
    "UnsafeViewBackward",
    "ReshapeAliasBackward",
    "SqueezeBackward",
    "UnsqueezeBackward",
    "AliasBackward",
    "ToCopyBackward",
    "CloneBackward",
)


def _tensors(output: Any) -> list[Tensor]:
    """The tensors of a model output, one level deep (a tensor, a tuple, a dict, an object's
    attributes: a Hugging Face output, a dataclass)."""
    if isinstance(output, Tensor):
        return [output]
    if isinstance(output, Mapping):
        items = list(output.values())
    elif isinstance(output, tuple | list):
        items = list(output)
    else:
        items = list(getattr(output, "__dict__", {}).values())
    return [v for v in items if isinstance(v, Tensor)]


def _from_output(value: Any, outputs: list[Tensor]) -> bool:
    """``value`` (a loss call's input) is one of ``outputs`` up to views and casts. True when
    it cannot be told (no autograd graph)."""
    if not isinstance(value, Tensor) or any(value is o for o in outputs):
        return True
    nodes = [o.grad_fn for o in outputs if o.grad_fn is not None]
    return not nodes or _walks_to(value, nodes, _VIEWS)


def _replayable(module: nn.Module) -> nn.Module:
    """The module probes replay: a ``torch.compile``d model's original module (probes need
    double backward and ``torch.func``, which compiled graphs do not support)."""
    inner = getattr(module, "_orig_mod", None)
    return inner if isinstance(inner, nn.Module) else module


def extract_loss(output: Any) -> Tensor:
    """The scalar loss inside a model's output (``loss``, ``(logits, loss)``, ``{"loss":…}``)."""
    loss = _returned_loss(output)
    if loss is None:
        raise ValueError("the model output holds no scalar loss; pass loss_fn")
    return loss.reshape(())


def _returned_loss(output: Any) -> Tensor | None:
    """The scalar loss tensor inside a model's output, as returned (its own ``grad_fn``)."""
    if isinstance(output, Tensor):
        return output if output.numel() == 1 else None
    candidates: list[Any] = []
    if isinstance(output, Mapping):
        candidates = [output.get("loss")]
    elif isinstance(output, tuple | list):
        candidates = list(output)
    else:
        candidates = [getattr(output, "loss", None)]
    for value in candidates:
        if isinstance(value, Tensor) and value.numel() == 1 and value.is_floating_point():
            return value
    return None


def batch_size_of(
    args: tuple[Any, ...], kwargs: dict[str, Any], batch_dim: int = 0
) -> tuple[int, int]:
    """(samples, tokens) of a forward's inputs: the first tensor's ``batch_dim`` (1 for
    sequence-first models), and batch × sequence when that tensor is a 2-D integer tensor
    (token ids)."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, Tensor) and value.dim() > 0:
            is_ids = value.dim() == 2 and not torch.is_floating_point(value)
            dim = batch_dim if value.dim() > batch_dim else 0
            samples = int(value.shape[dim])
            return samples, int(value.shape[0] * value.shape[1]) if is_ids else 0
    return 0, 0


# Modules whose inputs are (sequence, batch, …) unless built with batch_first=True
_SEQUENCE_FIRST = (
    nn.RNNBase,
    nn.Transformer,
    nn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer,
)


def batch_dim_of(module: nn.Module) -> int:
    """1 if ``module`` holds a sequence-first recurrent or transformer layer (PyTorch's
    default ``batch_first=False``, as in pytorch/examples' word_language_model), else 0."""
    for m in module.modules():
        if isinstance(m, _SEQUENCE_FIRST):
            attention = getattr(m, "self_attn", None)  # (the layers keep it there)
            first = getattr(m, "batch_first", getattr(attention, "batch_first", True))
            return 0 if first else 1
    return 0
