"""Optimizer steps no hook sees: ``optimizer.step`` compiled with ``torch.compile`` (PyTorch's
"compile the optimizer" recipe) runs without its hooks, so gradlens records no rows. The run
must say so (stderr once, ``meta.unavailable``) instead of finishing silently empty, and the
training must stay as it is; SAM's moved weights or accumulation at the first step must not
be taken for it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import gradlens

UNSEEN = "no optimizer step is seen"


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(32, 8, generator=g), torch.randint(0, 3, (32,), generator=g)


def _compiled_steps(model: nn.Module, steps: int = 5) -> dict[str, torch.Tensor]:
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    opt = torch.optim.Adam(model.parameters(), lr=torch.tensor(0.01))

    @torch.compile(backend="eager")
    def opt_step() -> None:
        opt.step()

    x, y = _data()
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt_step()
    graphs = counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())
    return {**{k: v.detach().clone() for k, v in model.state_dict().items()}, "graphs": graphs}


def test_a_compiled_optimizer_step_is_said_not_silently_empty(runs_dir, capsys):
    plain = _compiled_steps(_model())
    with gradlens.Lens(runs_dir=runs_dir) as lens:
        watched = _compiled_steps(_model())
    assert watched["graphs"] == plain.pop("graphs")  # no extra graph, no graph break
    for key, value in plain.items():
        assert torch.equal(watched[key], value), key
    run = gradlens.open_run(lens.run_dir)
    assert run.steps == 0
    assert UNSEEN in run.meta["unavailable"]["step capture"]
    assert capsys.readouterr().err.count(UNSEEN) == 1


def test_accumulation_and_weights_moved_once_before_a_step_are_not_it(runs_dir, capsys):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = _data()
    with gradlens.Lens(runs_dir=runs_dir) as lens:
        for step in range(4):
            F.cross_entropy(model(x[:16]), y[:16]).backward()  # accumulation
            F.cross_entropy(model(x[16:]), y[16:]).backward()
            if step == 0:  # an ascent step (SAM) before the first optimizer step
                with torch.no_grad():
                    for p in model.parameters():
                        p.add_(0.01 * p.grad)
                F.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad()
    run = gradlens.open_run(lens.run_dir)
    assert run.steps == 4 and "step capture" not in run.meta["unavailable"]
    assert UNSEEN not in capsys.readouterr().err


def test_functional_training_with_autograd_grad_is_said(runs_dir, capsys):
    """Gradients from ``torch.autograd.grad`` applied by hand: no backward, no optimizer step
    to capture. The run says so instead of finishing silently empty."""
    model = _model()
    params = list(model.parameters())
    x, y = _data()
    with gradlens.Lens(runs_dir=runs_dir) as lens:
        for _ in range(3):
            grads = torch.autograd.grad(F.cross_entropy(model(x), y), params)
            with torch.no_grad():
                for p, g in zip(params, grads, strict=True):
                    p -= 0.1 * g
    run = gradlens.open_run(lens.run_dir)
    assert run.steps == 0
    why = run.meta["unavailable"]["step capture"]
    assert "torch.autograd.grad" in why
    assert capsys.readouterr().err.count(why) == 1
