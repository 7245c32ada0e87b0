"""Recorded probe batches: root inputs and the loss call, inside or outside forward."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import gradlens
from gradlens.instrument import interception
from gradlens.watch import watch_script
from tests.conftest import EXAMPLES


def test_loss_inside_forward_is_recorded_with_targets(runs_dir):
    backward = torch.autograd.backward
    code, lens = watch_script(
        EXAMPLES / "tiny_gpt.py",
        ["--steps", "6"],
        runs_dir=runs_dir,
        status="off",
        probe_batches=2,
    )
    assert code == 0
    assert torch.autograd.backward is backward and F.cross_entropy.__module__ == (
        "torch.nn.functional"
    ), "watch must restore every patch"
    batches = lens.probe_set.batches
    assert len(batches) == 2
    first = batches[0]
    idx, targets = first.args
    assert idx.shape == (32, 64) and targets.shape == (32, 64)
    assert first.loss is not None and first.loss.name == "cross_entropy"
    assert first.loss.inside_forward
    assert first.loss.input_shape[0] == 32 * 64
    assert torch.equal(first.loss.target, targets.view(-1))
    run = gradlens.open_run(lens.run_dir)
    assert run.steps == 6
    tokens = run.table("scalars", filters=[("metric", "==", "tokens_per_s")])
    assert len(tokens) > 0


def test_loss_outside_forward_and_inputs_are_copies(runs_dir):
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 0, 1, 1])
    with gradlens.Lens(model, opt, runs_dir=runs_dir, probe_batches=1) as lens:
        for _ in range(3):
            opt.zero_grad()
            F.cross_entropy(model(x), y, label_smoothing=0.1).backward()
            opt.step()
            x.add_(1.0)  # the data pipeline reuses its buffer in place
    (batch,) = lens.probe_set.batches
    assert batch.loss is not None and not batch.loss.inside_forward
    assert batch.loss.kwargs == {"label_smoothing": 0.1}
    assert torch.allclose(batch.args[0], x - 3.0)  # the original batch, not the mutated one
    assert batch.batch_size == 5


def test_suspended_interception_records_nothing(runs_dir):
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradlens.Lens(model, opt, runs_dir=runs_dir) as lens:
        with interception.suspended():
            opt.zero_grad()
            model(torch.randn(4, 3)).sum().backward()
            opt.step()
        assert lens.step == 0


def test_backward_root_reaches_the_loss_call_through_scaling_casts_and_views():
    from gradlens.instrument.probe_set import _reaches

    w = torch.randn(3, requires_grad=True)
    loss = F.mse_loss(w, torch.zeros(3))
    node = loss.grad_fn
    assert _reaches(loss, node)
    assert _reaches((loss.double() / 4 * torch.tensor(8.0)).float().reshape(1).mean(), node)
    assert not _reaches(loss + w.sum(), node)  # another term
    assert not _reaches(loss * w[0], node)  # scaled by something trained
    assert not _reaches(loss.sqrt(), node)  # a function of the loss: another objective
    assert not _reaches(F.mse_loss(w, torch.ones(3)), node)


def test_the_loss_forward_returns_is_checked_at_the_next_backward():
    from gradlens.instrument.probe_set import ProbeSet

    model = nn.Linear(3, 2)
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    verdicts = []
    for penalty in (False, True):
        probe_set = ProbeSet(capacity=1)
        probe_set.record_forward(model, (x, y), {}, 4)
        logits = model(x)
        inner = F.cross_entropy(logits, y)
        probe_set.record_loss("cross_entropy", (logits, y), {}, inside_forward=True)
        assert not probe_set.full  # its forward has not returned yet
        returned = inner + 0.5 * logits.square().mean()  # the module's own objective
        probe_set.record_returned(nn.Linear(3, 2), (logits, returned))  # another module
        assert probe_set._checks == []
        probe_set._returning = probe_set.batches[0]
        probe_set.record_returned(model, (logits, returned))
        assert probe_set._checks[0]._node is returned.grad_fn  # not the inner loss call's
        root = returned / 4 + model.weight.square().sum() if penalty else returned / 4
        probe_set.record_backward([root])
        probe_set.record_forward(model, (x, y), {}, 4)  # the next forward settles it
        assert probe_set.full and interception._backward_watchers == []
        verdicts.append(probe_set.batches[0].whole)
    assert verdicts == [True, False]
