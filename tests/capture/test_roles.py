"""Optimizer roles are decided on the training thread and travel with each row."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import gradlens


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(32, 4, generator=g), torch.randint(0, 3, (32,), generator=g)


def test_two_phases_with_a_scheduler_keeping_the_first_optimizer_alive(runs_dir):
    """The regression from the design review: phase 2's fresh SGD took over late and the rows
    still buffered were decoded under the new role (loss [0, 5, 6, 7, 8], loss@1 [0..4])."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    x, y = _data()
    losses, schedulers = [], []
    with gradlens.Lens(runs_dir=runs_dir, every=50) as lens:
        for lr in (0.1, 0.01):
            opt = torch.optim.SGD(model.parameters(), lr=lr)
            schedulers.append(torch.optim.lr_scheduler.StepLR(opt, 10))  # keeps opt alive
            for _ in range(5):
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                losses.append(loss.item())
    scalars = gradlens.open_run(lens.run_dir).table("scalars")
    main = scalars[scalars.metric == "loss"].sort_values("step")
    assert main.step.tolist() == list(range(10))
    np.testing.assert_allclose(main.value, losses, rtol=1e-6)
    assert not scalars.metric.str.contains("@").any()


def test_optimizers_made_up_front_and_used_in_turn_keep_every_step_on_the_run(runs_dir):
    torch.manual_seed(0)
    a, b = nn.Linear(4, 3), nn.Linear(4, 3)
    opt_a, opt_b = torch.optim.SGD(a.parameters(), 0.1), torch.optim.SGD(b.parameters(), 0.1)
    x, y = _data()
    losses = []
    with gradlens.Lens(runs_dir=runs_dir) as lens:
        for model, opt in ((a, opt_a), (b, opt_b)):
            for _ in range(4):
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                losses.append(loss.item())
    run = gradlens.open_run(lens.run_dir)
    main = run.table("scalars", filters=[("metric", "==", "loss")]).sort_values("step")
    assert main.step.tolist() == list(range(8)) and run.steps == 8
    np.testing.assert_allclose(main.value, losses, rtol=1e-6)
    assert set(run.table("layers").layer) == {
        "Linear.weight", "Linear.bias", "Linear[1].weight", "Linear[1].bias"
    }  # fmt: skip


def test_two_optimizers_per_iteration_share_the_step_and_split_the_loss(runs_dir):
    """A GAN-style loop: the first optimizer's role writes ``loss``, the second's ``loss@2``,
    each with its own loss only, both at the same step numbers."""
    torch.manual_seed(0)
    d, g = nn.Linear(4, 3), nn.Linear(4, 3)
    opt_d, opt_g = torch.optim.SGD(d.parameters(), lr=0.1), torch.optim.SGD(g.parameters(), 0.1)
    x, y = _data()
    losses = []
    with gradlens.Lens([d, g], [opt_d, opt_g], runs_dir=runs_dir) as lens:
        for _ in range(4):
            for model, opt in ((d, opt_d), (g, opt_g)):
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y) * (1 if model is d else 10)
                loss.backward()
                opt.step()
                losses.append(loss.item())
    scalars = gradlens.open_run(lens.run_dir).table("scalars")
    main = scalars[scalars.metric == "loss"]
    other = scalars[scalars.metric == "loss@2"]
    assert main.step.tolist() == other.step.tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(main.value, losses[0::2], rtol=1e-6)  # d's own loss only
    np.testing.assert_allclose(other.value, losses[1::2], rtol=1e-6)


def test_a_new_optimizer_takes_over_when_the_old_one_is_gone(runs_dir):
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    x, y = _data()
    with gradlens.Lens(runs_dir=runs_dir) as lens:  # automatic, like watch
        for lr in (0.1, 0.01):  # two phases, each with a fresh optimizer
            opt = torch.optim.SGD(model.parameters(), lr=lr)
            for _ in range(5):
                opt.zero_grad()
                F.cross_entropy(model(x), y).backward()
                opt.step()
            del opt
    run = gradlens.open_run(lens.run_dir)
    assert run.steps == 10
    lr = run.table("scalars", filters=[("metric", "==", "lr")])
    assert lr.step.tolist() == list(range(10))
    np.testing.assert_allclose(lr.value, [0.1] * 5 + [0.01] * 5)
