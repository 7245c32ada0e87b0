"""``grad_norm`` is the gradient the model produced, before clipping; the clipped norm and the
coefficient are recorded beside it (oracle: the norms computed in the loop)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradlens


def _scalars(run, metric):
    df = run.table("scalars", filters=[("metric", "==", metric)]).sort_values("step")
    return df.step.tolist(), df.value.to_numpy()


@pytest.mark.parametrize(
    "how", ["norm", "norm_subset", "value", "value_then_noise", "norm_inf", "norm_twice"]
)
def test_pre_clip_norms_and_coefficient(runs_dir, how):
    """Clipped norm and coefficient are those right after the clipping: gradient noise added
    after it (DP-SGD style) is not clipping; a second clip measures from the first's input."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 5) * 4, torch.randint(0, 3, (32,))
    params = list(model.parameters())
    pre_layers, pre, post = [], [], []
    name = how.replace("_", "-")
    with gradlens.Lens(model, opt, runs_dir=runs_dir, name=name) as lens:
        for _ in range(5):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            pre_layers.append([p.grad.double().norm().item() for p in params])
            pre.append(float(np.linalg.norm(pre_layers[-1])))
            if how == "norm":
                torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
            elif how == "norm_subset":
                torch.nn.utils.clip_grad_norm_(params[:2], 0.1)
            elif how == "norm_inf":
                torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05, norm_type="inf")
            elif how == "norm_twice":
                torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
                torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
            else:
                torch.nn.utils.clip_grad_value_(model.parameters(), 0.01)
            post.append(float(np.linalg.norm([p.grad.double().norm().item() for p in params])))
            if how == "value_then_noise":
                for p in params:
                    p.grad.add_(torch.randn_like(p.grad) * 0.05)
            opt.step()
    run = gradlens.open_run(lens.run_dir)
    steps, grad_norm = _scalars(run, "grad_norm")
    assert steps == list(range(5))
    np.testing.assert_allclose(grad_norm, pre, rtol=1e-5)
    np.testing.assert_allclose(_scalars(run, "grad_norm_clipped")[1], post, rtol=1e-4)
    np.testing.assert_allclose(_scalars(run, "clip_coef")[1], np.array(post) / pre, rtol=1e-4)
    layers = run.table("layers", filters=[("metric", "==", "grad_norm")])
    table = layers.pivot(index="step", columns="layer", values="value")
    names = [n for n, _ in model.named_parameters()]
    np.testing.assert_allclose(table[names].to_numpy(), pre_layers, rtol=1e-5)


def test_no_clipping_no_clip_rows(runs_dir):
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradlens.Lens(model, opt, runs_dir=runs_dir) as lens:
        for _ in range(3):
            opt.zero_grad()
            model(torch.randn(4, 3)).sum().backward()
            opt.step()
    metrics = set(gradlens.open_run(lens.run_dir).table("scalars").metric)
    assert "grad_norm" in metrics and not metrics & {"grad_norm_clipped", "clip_coef"}


@pytest.mark.parametrize("guard", ["too_large", "raises"])
def test_a_step_skipped_after_clipping_leaves_no_trace(runs_dir, guard):
    """A spike guard (`if norm > limit: continue`) or `error_if_nonfinite=True` caught by the
    script clips gradients that no step applies: the next step is recorded with its own
    gradients, not the skipped ones' (the second clip was taken for a re-clip of the first)."""
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    pre, post = [], []
    with gradlens.Lens(model, opt, runs_dir=runs_dir) as lens:
        for it in range(5):
            opt.zero_grad()
            bad = it == 2
            scale = (float("nan") if guard == "raises" else 10.0) if bad else 1.0
            (scale * F.cross_entropy(model(x), y)).backward()
            own = float(np.linalg.norm([p.grad.double().norm().item() for p in model.parameters()]))
            try:
                norm = torch.nn.utils.clip_grad_norm_(
                    model.parameters(), 0.3, error_if_nonfinite=guard == "raises"
                )
            except RuntimeError:
                continue
            if norm > 2.0:
                continue
            pre.append(own)
            post.append(
                float(np.linalg.norm([p.grad.double().norm().item() for p in model.parameters()]))
            )
            opt.step()
    run = gradlens.open_run(lens.run_dir)
    steps, grad_norm = _scalars(run, "grad_norm")
    assert steps == [0, 1, 2, 3]
    np.testing.assert_allclose(grad_norm, pre, rtol=1e-5)
    np.testing.assert_allclose(_scalars(run, "clip_coef")[1], np.array(post) / pre, rtol=1e-4)
    assert not run.table("layers", filters=[("metric", "==", "grad_norm")]).value.isna().any()
