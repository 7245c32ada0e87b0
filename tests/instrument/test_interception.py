"""The backward event: which tensors a ``backward`` call propagates as the step's loss."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from gradlens.instrument import interception


class Losses(interception.ListenerBase):
    def __init__(self) -> None:
        self.seen: list[Tensor] = []
        self.ends = 0

    def on_backward(self, tensor: Tensor) -> None:
        self.seen.append(tensor)

    def after_backward(self) -> None:
        self.ends += 1


def _losses(call) -> tuple[list[float], int]:
    listener = Losses()
    interception.install(listener)
    try:
        w = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
        call(w)
    finally:
        interception.uninstall(listener)
    return [t.item() for t in listener.seen], listener.ends


def test_a_scalar_loss():
    assert _losses(lambda w: w.square().sum().backward()) == ([14.0], 1)
    assert _losses(lambda w: torch.autograd.backward(w.sum())) == ([2.0], 1)


def test_a_list_of_scalar_losses_is_their_sum():
    def call(w):
        torch.autograd.backward([w.square().sum(), w.sum()])  # multi-task: gradients add up

    assert _losses(call) == ([14.0, 2.0], 1)
    assert _losses(lambda w: torch.autograd.backward((w.sum(),))) == ([2.0], 1)


def test_no_loss_for_vector_jacobian_products():
    def weighted(w):  # explicit grad_tensors: a weighted sum gradlens does not read
        torch.autograd.backward([w.sum(), w.square().sum()], [torch.tensor(2.0)] * 2)

    assert _losses(lambda w: w.backward(torch.ones(3))) == ([], 1)
    assert _losses(weighted) == ([], 1)
    assert _losses(lambda w: torch.autograd.backward([w * 2], [torch.ones(3)])) == ([], 1)


def test_a_backward_inside_backward_is_not_a_step():
    """Reentrant activation checkpointing runs ``torch.autograd.backward`` from inside the
    script's backward: one loss, one end of backward."""
    from torch.utils.checkpoint import checkpoint

    block = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Tanh())

    def call(w):
        h = w.unsqueeze(0)
        for _ in range(2):
            h = checkpoint(block, h, use_reentrant=True)
        h.sum().backward()

    losses, ends = _losses(call)
    assert len(losses) == 1 and ends == 1


class _Requests(interception.ListenerBase):
    """Asks for the result of every loss call it is told about."""

    def __init__(self) -> None:
        self.results: list[Tensor] = []

    def on_loss_call(self, name, args, kwargs) -> None:
        interception.request_loss_result(self.results.append)


def test_loss_results_and_backward_roots_on_request_only():
    import torch.nn.functional as F

    listener = _Requests()
    roots: list[list[Tensor]] = []
    interception.request_loss_result(lambda r: roots.append([r]))  # outside a loss call: no-op
    interception.install(listener)
    try:
        w = torch.tensor([1.0, 2.0], requires_grad=True)
        loss = F.mse_loss(w, torch.zeros(2))
        with torch.no_grad():  # an evaluation: on_eval_loss, not a result
            F.mse_loss(w, torch.zeros(2))
        interception.watch_backward(roots.append)
        (loss * 3).backward()
        with interception.suspended():  # gradlens's own backward is not the script's
            w.sum().backward()
        interception.unwatch_backward(roots.append)
        w.sum().backward()
        interception.watch_backward(roots.append)
    finally:
        interception.uninstall(listener)
    assert listener.results == [loss]
    assert len(roots) == 1 and roots[0][0].grad_fn.name() == "MulBackward0"
    assert interception._backward_watchers == []  # cleared with the last listener


class _Failing(interception.ListenerBase):
    def __init__(self) -> None:
        self.ends = 0

    def on_backward(self, tensor: Tensor) -> None:
        raise RuntimeError("listener bug")

    def after_backward(self) -> None:
        self.ends += 1


def test_a_failing_listener_is_reported_once_and_never_reaches_the_script(monkeypatch, capsys):
    monkeypatch.setenv("GRADLENS_STRICT", "0")
    monkeypatch.setattr(interception, "_reported", set())
    failing, other = _Failing(), Losses()
    interception.install(failing)
    interception.install(other)
    try:
        w = torch.tensor([1.0, 2.0], requires_grad=True)
        for _ in range(2):
            w.square().sum().backward()
    finally:
        interception.uninstall(other)
        interception.uninstall(failing)
    assert w.grad is not None and w.grad.tolist() == [4.0, 8.0]  # two backwards, unchanged
    assert failing.ends == 2 and [t.item() for t in other.seen] == [5.0, 5.0]
    err = capsys.readouterr().err
    assert err.count("gradlens: ignored error in on_backward: RuntimeError('listener bug')") == 1
    monkeypatch.setenv("GRADLENS_STRICT", "1")  # the test suite's mode: raised
    interception.install(failing)
    try:
        with pytest.raises(RuntimeError, match="listener bug"):
            w.sum().backward()
    finally:
        interception.uninstall(failing)
