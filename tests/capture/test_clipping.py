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


class _SAM(torch.optim.Optimizer):
    """davda54/sam's two-step SAM: the base optimizer is made inside, over the same groups."""

    def __init__(self, params, base, rho=0.05, **kwargs):
        super().__init__(params, dict(rho=rho, **kwargs))
        self.base_optimizer = base(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups

    @torch.no_grad()
    def first_step(self):
        norm = torch.stack([p.grad.norm() for g in self.param_groups for p in g["params"]]).norm()
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p]["old_p"] = p.data.clone()
                p.add_(p.grad * group["rho"] / (norm + 1e-12))
        self.zero_grad()

    @torch.no_grad()
    def second_step(self):
        for group in self.param_groups:
            for p in group["params"]:
                p.data = self.state[p]["old_p"]
        self.base_optimizer.step()
        self.zero_grad()

    @torch.no_grad()
    def step(self, closure):  # the closure form: the closure runs at the ascent point
        self.first_step()
        with torch.enable_grad():
            closure()
        self.second_step()


@pytest.mark.parametrize("clips", [1, 2])
def test_sam_with_clipping_records_the_applied_gradient(runs_dir, clips):
    """SAM's two-step form with ``clip_grad_norm_`` before ``second_step`` (and before
    ``first_step``): the clip belongs to the base optimizer that steps (SAM never does; which
    of the two took it depended on a set's order), and the recorded norms are those of the
    gradient at the ascent point, the one applied."""
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = _SAM(model.parameters(), torch.optim.SGD, lr=0.1)
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    applied = []
    with gradlens.Lens(runs_dir=runs_dir) as lens:
        for _ in range(3):
            F.cross_entropy(model(x), y).backward()
            if clips == 2:
                torch.nn.utils.clip_grad_norm_(model.parameters(), 0.3)
            opt.first_step()
            F.cross_entropy(model(x), y).backward()
            applied.append(torch.nn.utils.clip_grad_norm_(model.parameters(), 0.3).item())
            opt.second_step()
    run = gradlens.open_run(lens.run_dir)
    assert run.meta["hyperparameters"]["optimizer"] == "SGD"
    np.testing.assert_allclose(_scalars(run, "grad_norm")[1], applied, rtol=1e-5)
    coef = np.minimum(1.0, 0.3 / (np.array(applied) + 1e-6))
    np.testing.assert_allclose(_scalars(run, "clip_coef")[1], coef, rtol=1e-5)


def test_sam_closure_form_leaves_out_the_weight_norms_it_cannot_read(runs_dir):
    """``opt.step(closure)``: SAM moves the weights to its ascent point before calling the
    closure, where gradlens reads the step's row: ‖θ‖ and ‖Δθ‖ there were at the ascent point
    (‖Δθ‖ 90× too large), so they are left out; the gradient is the one applied."""
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = _SAM(model.parameters(), torch.optim.SGD, lr=0.1)
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    applied = []

    def closure():
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        applied.append(np.linalg.norm([p.grad.double().norm().item() for p in model.parameters()]))
        return loss

    with gradlens.Lens(runs_dir=runs_dir, param_every=1) as lens:
        for _ in range(3):
            F.cross_entropy(model(x), y).backward()
            opt.step(closure)
    run = gradlens.open_run(lens.run_dir)
    np.testing.assert_allclose(_scalars(run, "grad_norm")[1], applied, rtol=1e-5)
    layers = set(run.table("layers").metric)
    assert "grad_norm" in layers and not layers & {"param_norm", "update_norm"}
