"""The loss recorded for a step is what the script backpropagated into the gradients that
step applied: micro-batches of an accumulation add up, tasks backpropagated from one forward
add up (even with the gradients cleared between them, PCGrad style), and a backward whose
gradients the script dropped before the next forward (``if not isfinite(loss): continue``
after ``backward``, then ``zero_grad``) is not charged to the next step."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradlens


def _setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(16, 10, generator=g), torch.randint(0, 3, (16,), generator=g))] * 6
    return model, data


def _losses(run: gradlens.Run) -> tuple[list[int], np.ndarray]:
    df = run.table("scalars", filters=[("metric", "==", "loss")]).sort_values("step")
    return df.step.tolist(), df.value.to_numpy()


@pytest.mark.parametrize("set_to_none", [True, False])
def test_a_backward_dropped_before_the_next_forward_is_not_the_next_steps(runs_dir, set_to_none):
    model, data = _setup()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    applied = []
    with gradlens.Lens(runs_dir=runs_dir) as lens:
        for i, (x, y) in enumerate(data):
            x = x.clone()
            if i == 2:
                x[0, 0] = math.nan
            opt.zero_grad(set_to_none=set_to_none)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            if not torch.isfinite(loss):
                continue
            applied.append(loss.item())
            opt.step()
    run = gradlens.open_run(lens.run_dir)
    steps, values = _losses(run)
    assert steps == list(range(5))
    np.testing.assert_allclose(values, applied, rtol=1e-6)
    assert run.table("events", filters=[("kind", "==", "nonfinite_loss")]).empty


def test_tasks_of_one_forward_add_up_even_with_gradients_cleared_between(runs_dir):
    """PCGrad-style: each task's gradient taken alone, combined by hand, one step."""
    model, data = _setup()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    params = list(model.parameters())
    applied = []
    with gradlens.Lens(runs_dir=runs_dir) as lens:
        for x, y in data:
            out = model(x)
            tasks = [F.cross_entropy(out, y), out.pow(2).mean()]
            grads = []
            for k, task in enumerate(tasks):
                opt.zero_grad()
                task.backward(retain_graph=k == 0)
                grads.append([p.grad.clone() for p in params])
            for p, g1, g2 in zip(params, *grads, strict=True):
                p.grad = g1 + g2
            applied.append(sum(t.item() for t in tasks))
            opt.step()
    steps, values = _losses(gradlens.open_run(lens.run_dir))
    assert steps == list(range(6))
    np.testing.assert_allclose(values, applied, rtol=1e-6)


def test_micro_batches_add_up(runs_dir):
    model, data = _setup()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    applied = []
    with gradlens.Lens(runs_dir=runs_dir) as lens:
        for x, y in data:
            total = 0.0
            for half in (slice(0, 8), slice(8, 16)):
                loss = F.cross_entropy(model(x[half]), y[half]) / 2
                loss.backward()
                total += loss.item()
            applied.append(total)
            opt.step()
            opt.zero_grad()
    steps, values = _losses(gradlens.open_run(lens.run_dir))
    assert steps == list(range(6))
    np.testing.assert_allclose(values, applied, rtol=1e-6)
