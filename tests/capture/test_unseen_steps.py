"""Optimizer steps no hook sees: ``optimizer.step`` compiled with ``torch.compile`` (PyTorch's
"compile the optimizer" recipe) runs without its hooks. Once the weights are seen to move
twice with no step seen, the steps are recorded from the end of each backward (the rows the
coming step applies), committed when the weights move: the values must be those the script
computes itself, the run must say what is missing (stderr once, ``meta.unavailable``), and
the training must stay as it is; SAM's moved weights or accumulation at the first step must
not be taken for it."""

from __future__ import annotations

from typing import Any

import pytest
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


def _compiled_steps(
    model: nn.Module, steps: int = 5, accum: int = 1, clip: float | None = None
) -> dict[str, Any]:
    """The recipe's loop; returns the final weights, dynamo's graph counts and, per step, what
    the script computed: loss, per-tensor gradient norms before clipping, lr, ‖Δθ‖."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=torch.tensor(0.01))
    schedule = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)

    @torch.compile(backend="eager")
    def opt_step() -> None:
        opt.step()

    x, y = _data()
    seen: list[dict[str, Any]] = []
    for _ in range(steps):
        opt.zero_grad()
        loss = 0.0
        for k in range(accum):
            part = F.cross_entropy(model(x[k::accum]), y[k::accum]) / accum
            part.backward()
            loss += float(part.detach())
        norms = [float(p.grad.norm()) for p in params]
        lr = float(opt.param_groups[0]["lr"])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(params, clip)
        before = [p.detach().clone() for p in params]
        opt_step()
        moved = [float((p.detach() - b).norm()) for p, b in zip(params, before, strict=True)]
        schedule.step()
        seen.append({"loss": loss, "norms": norms, "lr": lr, "moved": moved})
    graphs = counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return {"weights": weights, "graphs": graphs, "seen": seen}


@pytest.mark.parametrize(("accum", "clip"), [(1, None), (2, 0.05)])
def test_a_compiled_optimizer_step_is_recorded_from_the_end_of_backward(
    runs_dir, capsys, accum, clip
):
    steps = 12
    plain = _compiled_steps(_model(), steps, accum, clip)
    with gradlens.Lens(runs_dir=runs_dir) as lens:
        watched = _compiled_steps(_model(), steps, accum, clip)
    assert watched["graphs"] == plain["graphs"]  # no extra graph, no graph break
    for key, value in plain["weights"].items():
        assert torch.equal(watched["weights"][key], value), key
    run = gradlens.open_run(lens.run_dir)
    assert run.steps == steps
    assert UNSEEN in run.meta["unavailable"]["step hooks"]
    assert "step capture" not in run.meta["unavailable"]
    assert capsys.readouterr().err.count(UNSEEN) == 1

    seen = watched["seen"]
    scalars = run.table("scalars")
    loss = scalars[scalars.metric == "loss"].set_index("step").value
    lr = scalars[scalars.metric == "lr"].set_index("step").value
    assert list(loss.index) == list(range(2, steps))  # the two steps that revealed it: lost
    for step in range(2, steps):
        assert loss[step] == pytest.approx(seen[step]["loss"], rel=1e-6)
        assert lr[step] == pytest.approx(seen[step]["lr"])  # before the scheduler's step
    layers = run.table("layers")
    names = [n for n, _ in _model().named_parameters()]
    grads = layers[layers.metric == "grad_norm"]
    for step in range(2, steps):
        at = grads[grads.step == step].set_index("layer").value
        assert [at[n] for n in names] == pytest.approx(seen[step]["norms"], rel=1e-5)
    updates = layers[(layers.metric == "update_norm") & layers.value.notna()]
    assert sorted(updates.step.unique()) == [10]  # sampled every 10 steps
    at = updates.set_index("layer").value
    assert [at[n] for n in names] == pytest.approx(seen[10]["moved"], rel=1e-5)


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
