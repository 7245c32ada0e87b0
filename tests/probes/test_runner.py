"""The probe runner on unusual training loops: when a due probe runs, on which module, and
that a probe at the end does not repeat the one just scheduled."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import gradlens


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(32, 4, generator=g), torch.randint(0, 3, (32,), generator=g)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


def _train(model, steps=6, no_grad_step=False, runs_dir=None, **options):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = _data()
    with gradlens.Lens(model, opt, runs_dir=runs_dir, **options) as lens:
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            if no_grad_step:
                with torch.no_grad():
                    opt.step()
            else:
                opt.step()
    return gradlens.open_run(lens.run_dir)


def test_probes_due_before_a_batch_was_seen_wait_for_one_instead_of_giving_up(runs_dir):
    options = {"hessian": {"every": 1, "k": 1, "trace": False}, "collapse": {"every": 1}}
    run = _train(_mlp(), no_grad_step=True, runs_dir=runs_dir, probe_options=options)
    assert sorted(run.table("hessian").step.unique()) == list(range(6))  # even under no_grad
    assert sorted(run.table("collapse").step.unique()) == list(range(6))


def test_probes_replay_the_right_module_of_a_split_model(runs_dir):
    """Backbone and head are separate modules; the probes replay the one that saw the batch."""
    torch.manual_seed(0)
    backbone, head = nn.Sequential(nn.Linear(4, 8), nn.Tanh()), nn.Linear(8, 3)
    opt = torch.optim.SGD([*backbone.parameters(), *head.parameters()], lr=0.1)
    x, y = _data()
    options = {"hessian": {"every": 2, "k": 1, "trace": False}}
    with gradlens.Lens(runs_dir=runs_dir, probe_options=options) as lens:
        for _ in range(4):
            opt.zero_grad()
            F.cross_entropy(head(backbone(x)), y).backward()
            opt.step()
    assert sorted(gradlens.open_run(lens.run_dir).table("hessian").step.unique()) == [1, 3]


def test_at_end_probe_does_not_repeat_the_scheduled_one(runs_dir):
    options = {"collapse": {"every": 2, "at_end": True}}
    run = _train(_mlp(), steps=4, runs_dir=runs_dir, probe_options=options)
    steps = run.table("collapse", filters=[("metric", "==", "nc1")]).step.tolist()
    assert steps == [1, 3]
