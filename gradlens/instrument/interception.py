"""Process-wide interception of what a training script does, for listeners that want it.

Patched while at least one listener is installed, restored exactly when the last one leaves:
- ``torch.autograd.backward`` (and so ``Tensor.backward``): the loss being backpropagated
  (a scalar, or a list of scalars: their sum), and the moment backward completes;
- loss functions in ``torch.nn.functional`` (also reached through ``nn.CrossEntropyLoss`` &
  co. and from inside a model's ``forward``): the logits/predictions and targets, and for a
  call made with gradients off (``no_grad``, ``inference_mode``: an evaluation) the loss it
  returned;
- ``torch.utils.data.DataLoader.__iter__``: a pass over a loader begins (evaluation phases);
- ``torch.amp.GradScaler.scale`` / ``.step``: unscaled losses and skipped steps;
- ``torch.optim.Optimizer.__init__``: which optimizers exist before their first step;
- ``torch.nn.utils.clip_grad_norm_`` / ``clip_grad_value_``: gradients about to be clipped
  (their norms are the model's own gradient) and the total norm the clip computed;
- ``multiprocessing``'s ``Process.start``: child processes the script starts; with
  :func:`bootstrap_next_spawn`, a 'spawn'-started child runs a line of gradlens's first
  (``multiprocessing.spawn.get_command_line``: the ``-c`` program of the child).

Nothing here changes a result: every wrapper calls the original with the same arguments and
returns its result untouched. Listener errors are reported once and never reach the script.

Two narrower channels cost nothing when unused (the probe set checks, while it records, that
the recorded loss call is what the script backpropagates): :func:`request_loss_result` asks,
from inside ``on_loss_call``, for the result of the loss call in progress; and
:func:`watch_backward` sees the roots of each backward the script calls.
"""

from __future__ import annotations

import functools
import multiprocessing.process
import multiprocessing.spawn
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import torch
import torch.nn.functional as F
import torch.utils.data
from torch import Tensor

from gradlens.instrument.tracing import tracing

__all__ = [
    "LOSS_FUNCTIONS",
    "Listener",
    "ListenerBase",
    "bootstrap_next_spawn",
    "install",
    "is_suspended",
    "request_loss_result",
    "suspended",
    "uninstall",
    "unwatch_backward",
    "watch_backward",
]

LOSS_FUNCTIONS = (
    "cross_entropy",
    "nll_loss",
    "mse_loss",
    "l1_loss",
    "smooth_l1_loss",
    "huber_loss",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "kl_div",
)


class Listener(Protocol):
    """What the interception calls. Every method must be cheap and must not raise."""

    def on_backward(self, tensor: Tensor) -> None: ...

    def after_backward(self) -> None: ...

    def on_loss_call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None: ...

    def on_eval_loss(
        self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], value: Any
    ) -> None: ...

    def on_loader_iter(self, loader: Any) -> None: ...

    def on_scale(self, unscaled: Tensor, scaled: Tensor) -> None: ...

    def before_scaler_step(self, scaler: Any, optimizer: Any) -> None: ...

    def after_scaler_step(self, scaler: Any, optimizer: Any) -> None: ...

    def on_optimizer_created(self, optimizer: torch.optim.Optimizer) -> None: ...

    def before_clip(self, params: list[Tensor]) -> None: ...

    def after_clip(self, params: list[Tensor], total: Tensor | None, max_norm: Any) -> None: ...

    def on_process_start(self, process: Any) -> None: ...

    def after_process_start(self, process: Any) -> None: ...


class ListenerBase:
    """A :class:`Listener` that ignores every event: subclasses override the ones they use."""

    def on_backward(self, tensor: Tensor) -> None:
        pass

    def after_backward(self) -> None:
        pass

    def on_loss_call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        pass

    def on_eval_loss(
        self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], value: Any
    ) -> None:
        pass

    def on_loader_iter(self, loader: Any) -> None:
        pass

    def on_scale(self, unscaled: Tensor, scaled: Tensor) -> None:
        pass

    def before_scaler_step(self, scaler: Any, optimizer: Any) -> None:
        pass

    def after_scaler_step(self, scaler: Any, optimizer: Any) -> None:
        pass

    def on_optimizer_created(self, optimizer: torch.optim.Optimizer) -> None:
        pass

    def before_clip(self, params: list[Tensor]) -> None:
        pass

    def after_clip(self, params: list[Tensor], total: Tensor | None, max_norm: Any) -> None:
        pass

    def on_process_start(self, process: Any) -> None:
        pass

    def after_process_start(self, process: Any) -> None:
        pass


_listeners: list[Listener] = []
_originals: dict[tuple[object, str], Any] = {}
_suspended = 0
_busy = 0  # > 0 while a listener runs: loss calls made by gradlens itself are not the script's
_backward_depth = 0  # > 0 while a backward the script called runs
_reported: set[str] = set()
_loss_results_wanted: list[Callable[[Any], None]] = []  # see request_loss_result
_backward_watchers: list[Callable[[list[Tensor]], None]] = []
_spawn_bootstrap: str | None = None  # see bootstrap_next_spawn


def install(listener: Listener) -> None:
    """Start sending events to ``listener`` (patching torch on the first install)."""
    if not _listeners:
        _patch_all()
    _listeners.append(listener)


def uninstall(listener: Listener) -> None:
    """Stop sending events to ``listener`` (restoring torch when none is left)."""
    if listener in _listeners:
        _listeners.remove(listener)
    if not _listeners:
        for (owner, name), original in _originals.items():
            setattr(owner, name, original)
        _originals.clear()
        _backward_watchers.clear()
        bootstrap_next_spawn(None)


def request_loss_result(callback: Callable[[Any], None]) -> None:
    """Call ``callback(result)`` when the loss call now being announced by ``on_loss_call``
    returns with gradients on (a training loss, or an evaluation that kept gradients on).
    Outside ``on_loss_call`` it does nothing."""
    _loss_results_wanted.append(callback)


def bootstrap_next_spawn(code: str | None) -> None:
    """Python ``code`` the next 'spawn'-started child runs before multiprocessing's own (from
    ``on_process_start``; the listener clears it in ``after_process_start``). None: nothing."""
    global _spawn_bootstrap
    _spawn_bootstrap = code


def watch_backward(callback: Callable[[list[Tensor]], None]) -> None:
    """Call ``callback(losses)`` at each backward the script calls (``losses``: the scalar
    roots, as ``on_backward`` gets them; empty for a non-scalar backward), until
    :func:`unwatch_backward`."""
    if callback not in _backward_watchers:
        _backward_watchers.append(callback)


def unwatch_backward(callback: Callable[[list[Tensor]], None]) -> None:
    if callback in _backward_watchers:
        _backward_watchers.remove(callback)


@contextmanager
def suspended() -> Iterator[None]:
    """No events inside (probes replaying batches use this)."""
    global _suspended
    _suspended += 1
    try:
        yield
    finally:
        _suspended -= 1


def is_suspended() -> bool:
    """True inside ``suspended()``: work done now is gradlens's own, not the script's."""
    return _suspended > 0


def _emit(method: str, *args: Any) -> None:
    global _busy
    if _suspended:
        return
    _busy += 1
    try:
        for listener in list(_listeners):
            try:  # _safely, inlined: several events a step, each to every listener
                getattr(listener, method)(*args)
            except Exception as exc:  # never break the training script
                _ignored(method, exc)
    finally:
        _busy -= 1


def _safely(method: str, fn: Callable[..., Any], *args: Any) -> None:
    global _busy
    _busy += 1
    try:
        fn(*args)
    except Exception as exc:  # never break the training script
        _ignored(method, exc)
    finally:
        _busy -= 1


def _ignored(method: str, exc: Exception) -> None:
    """Report a listener's error once per event (``GRADLENS_STRICT=1``: raise it)."""
    if os.environ.get("GRADLENS_STRICT") == "1":
        raise exc
    if method not in _reported:
        _reported.add(method)
        print(f"gradlens: ignored error in {method}: {exc!r}", file=sys.stderr)


def _patch(owner: object, name: str, make: Callable[[Any], Any]) -> None:
    original = getattr(owner, name)
    _originals[(owner, name)] = original
    setattr(owner, name, make(original))


def _patch_all() -> None:
    _patch(torch.autograd, "backward", _wrap_backward)
    for name in LOSS_FUNCTIONS:
        _patch(F, name, functools.partial(_wrap_loss, name))
    _patch(torch.amp.GradScaler, "scale", _wrap_scale)
    _patch(torch.amp.GradScaler, "step", _wrap_scaler_step)
    _patch(torch.optim.Optimizer, "__init__", _wrap_optimizer_init)
    _patch(torch.utils.data.DataLoader, "__iter__", _wrap_loader_iter)
    clip_grad = torch.nn.utils.clip_grad
    for owner in (torch.nn.utils, clip_grad):  # both names scripts call them by
        _patch(owner, "clip_grad_norm_", _wrap_clip_norm)
        _patch(owner, "clip_grad_value_", _wrap_clip_value)
    _patch(multiprocessing.process.BaseProcess, "start", _wrap_process_start)
    _patch(multiprocessing.spawn, "get_command_line", _wrap_spawn_command)


def _wrap_backward(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def backward(tensors: Any, *args: Any, **kwargs: Any) -> Any:
        global _backward_depth
        if _backward_depth:  # called by the autograd engine inside a backward (reentrant
            return original(tensors, *args, **kwargs)  # checkpointing): not the script's
        losses = _losses(tensors, args, kwargs)
        for loss in losses:
            _emit("on_backward", loss)
        if _backward_watchers and not _suspended:
            for watcher in list(_backward_watchers):
                _safely("watch_backward", watcher, losses)
        _backward_depth += 1
        try:
            result = original(tensors, *args, **kwargs)
        finally:
            _backward_depth -= 1
        _emit("after_backward")
        return result

    return backward


def _losses(tensors: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Tensor]:
    """The scalar losses a backward call propagates (their sum is the step's loss): a scalar
    tensor, or scalars in a list without ``grad_tensors`` (``torch.autograd.backward([loss_a,
    loss_b])``: their gradients add up)."""
    if isinstance(tensors, Tensor):
        return [tensors] if tensors.numel() == 1 else []
    weights = kwargs.get("grad_tensors", args[0] if args else None)
    if weights is not None or not isinstance(tensors, list | tuple):
        return []
    if all(isinstance(t, Tensor) and t.numel() == 1 for t in tensors):
        return list(tensors)
    return []


def _wrap_loss(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def loss(*args: Any, **kwargs: Any) -> Any:
        if not _listeners or _busy or tracing():  # (_busy: gradlens's own call, e.g. the
            return original(*args, **kwargs)  # softmax stats' cross-entropy in half precision)
        _loss_results_wanted.clear()
        _emit("on_loss_call", name, args, kwargs)
        wanted = _loss_results_wanted[:]
        _loss_results_wanted.clear()
        result = original(*args, **kwargs)
        if not torch.is_grad_enabled():  # an evaluation (a training loss needs gradients)
            _emit("on_eval_loss", name, args, kwargs, result)
            return result
        for callback in wanted:
            _safely("request_loss_result", callback, result)
        return result

    return loss


def _wrap_scale(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def scale(self: Any, outputs: Any) -> Any:
        result = original(self, outputs)
        if isinstance(outputs, Tensor) and isinstance(result, Tensor):
            _emit("on_scale", outputs, result)
        return result

    return scale


def _wrap_scaler_step(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def step(self: Any, optimizer: Any, *args: Any, **kwargs: Any) -> Any:
        _emit("before_scaler_step", self, optimizer)
        result = original(self, optimizer, *args, **kwargs)
        _emit("after_scaler_step", self, optimizer)
        return result

    return step


def _wrap_optimizer_init(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        _emit("on_optimizer_created", self)

    return init


def _wrap_loader_iter(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def __iter__(self: Any) -> Any:
        iterator = original(self)
        _emit("on_loader_iter", self)
        return iterator

    return __iter__


def _clip_list(parameters: Any) -> tuple[Any, list[Tensor]]:
    """(what to pass on, the list of tensors): a generator can only be read once."""
    if isinstance(parameters, Tensor):
        return parameters, [parameters]
    params = list(parameters)
    return params, params


def _wrap_clip_norm(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def clip_grad_norm_(parameters: Any, max_norm: Any, *args: Any, **kwargs: Any) -> Any:
        if not _listeners or tracing():
            return original(parameters, max_norm, *args, **kwargs)
        parameters, params = _clip_list(parameters)
        _emit("before_clip", params)
        total = original(parameters, max_norm, *args, **kwargs)
        norm_type = kwargs.get("norm_type", args[0] if args else 2.0)
        if float(norm_type) == 2.0:
            _emit("after_clip", params, total, max_norm)
        else:  # its total is not the L2 norm: the clipped gradients are measured instead
            _emit("after_clip", params, None, None)
        return total

    return clip_grad_norm_


def _wrap_clip_value(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def clip_grad_value_(parameters: Any, clip_value: Any, *args: Any, **kwargs: Any) -> Any:
        if not _listeners or tracing():
            return original(parameters, clip_value, *args, **kwargs)
        parameters, params = _clip_list(parameters)
        _emit("before_clip", params)
        result = original(parameters, clip_value, *args, **kwargs)
        _emit("after_clip", params, None, None)
        return result

    return clip_grad_value_


def _wrap_process_start(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def start(self: Any) -> None:
        _emit("on_process_start", self)
        try:
            return original(self)
        finally:
            _emit("after_process_start", self)

    return start


def _wrap_spawn_command(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def get_command_line(**kwds: Any) -> list[str]:
        command = original(**kwds)
        code = _spawn_bootstrap
        if code is None or "-c" not in command or _suspended:
            return command
        at = command.index("-c") + 1  # the child's program: ours first, guarded
        guarded = f"try:\n    {code}\nexcept Exception:\n    pass\n"
        return [*command[:at], guarded + command[at], *command[at + 1 :]]

    return get_command_line
