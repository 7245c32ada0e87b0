"""Parameters that join an optimizer's step mid-run — a frozen backbone unfrozen
(``requires_grad_``) or a new ``add_param_group`` — are recorded from that step on
(oracle: the per-tensor gradient norms computed in the loop)."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradlens


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3))


def _train(runs_dir, how: str, explicit: bool):
    gc.collect()  # auto mode finds optimizers through gc: none left from an earlier test
    model = _model()
    backbone, head = model[0], model[2]
    backbone.requires_grad_(False)
    if how == "add_param_group":
        opt = torch.optim.SGD(head.parameters(), lr=0.1)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 5), torch.randint(0, 3, (32,))
    expected: list[dict[str, float]] = []
    given = (model, opt) if explicit else ()
    with gradlens.Lens(*given, runs_dir=runs_dir, name=how) as lens:
        for step in range(6):
            if step == 3:
                backbone.requires_grad_(True)
                if how == "add_param_group":
                    opt.add_param_group({"params": backbone.parameters(), "lr": 0.01})
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            expected.append(
                {
                    n: p.grad.double().norm().item()
                    for n, p in model.named_parameters()
                    if p.grad is not None
                }
            )
            opt.step()
    return gradlens.open_run(lens.run_dir), expected


@pytest.mark.parametrize("explicit", [True, False], ids=["explicit", "auto"])
@pytest.mark.parametrize("how", ["add_param_group", "requires_grad"])
def test_unfrozen_parameters_recorded_from_their_first_step(runs_dir, how, explicit):
    run, expected = _train(runs_dir, how, explicit)
    layers = run.table("layers", filters=[("metric", "==", "grad_norm")])
    table = layers.pivot(index="step", columns="layer", values="value")
    assert set(table.columns) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert table.index.tolist() == list(range(6))
    for step, norms in enumerate(expected):
        for name in table.columns:
            if step < 3 and name.startswith("0."):
                assert np.isnan(table.loc[step, name]), (step, name)  # not recorded yet
            else:
                assert table.loc[step, name] == pytest.approx(norms[name], rel=1e-5)
    total = run.table("scalars", filters=[("metric", "==", "grad_norm")]).sort_values("step")
    oracle = [np.linalg.norm(list(n.values())) for n in expected]
    np.testing.assert_allclose(total.value.to_numpy(), oracle, rtol=1e-5)


def test_unchanged_optimizer_keeps_its_recorder(runs_dir):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradlens.Lens(model, opt, runs_dir=runs_dir) as lens:
        for _ in range(3):
            opt.zero_grad()
            model(torch.randn(4, 5)).sum().backward()
            opt.step()
            tracked = lens._tracking.roles.by_optimizer[opt]
            if _ == 0:
                first = tracked.recorder
            assert tracked.recorder is first


@pytest.mark.parametrize("how", ["add_param_group", "requires_grad"])
def test_clipping_on_the_unfreezing_step(runs_dir, how):
    """The clip call comes before the step's capture: the pre-clip norms of the new set."""
    gc.collect()
    model = _model()
    model[0].requires_grad_(False)
    head = model[2].parameters() if how == "add_param_group" else model.parameters()
    opt = torch.optim.SGD(head, lr=0.1)
    x, y = torch.randn(32, 5) * 4, torch.randint(0, 3, (32,))
    pre, coef = [], []
    with gradlens.Lens(runs_dir=runs_dir) as lens:
        for step in range(5):
            if step == 2:
                model[0].requires_grad_(True)
                if how == "add_param_group":
                    opt.add_param_group({"params": model[0].parameters()})
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            grads = [p.grad.double().norm() for p in model.parameters() if p.grad is not None]
            pre.append(torch.stack(grads).norm().item())
            total = torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
            coef.append(min(1.0, 0.1 / (total.item() + 1e-6)))
            opt.step()
    run = gradlens.open_run(lens.run_dir)
    for metric, expected in (("grad_norm", pre), ("clip_coef", coef)):
        df = run.table("scalars", filters=[("metric", "==", metric)]).sort_values("step")
        assert df.step.tolist() == list(range(5)), metric
        np.testing.assert_allclose(df.value.to_numpy(), expected, rtol=1e-4, err_msg=metric)


def _grad_norms(run: gradlens.Run):
    layers = run.table("layers", filters=[("metric", "==", "grad_norm")])
    return layers.pivot(index="step", columns="layer", values="value")


def test_a_tensor_listed_twice_is_recorded_once(runs_dir):
    """A tied weight in ``SGD(list(enc.parameters()) + list(dec.parameters()))``."""
    torch.manual_seed(0)
    enc, dec = nn.Linear(8, 8), nn.Linear(8, 8)
    dec.weight = enc.weight
    model = nn.Sequential(enc, nn.Tanh(), dec)
    with pytest.warns(UserWarning, match="duplicate parameters"):
        opt = torch.optim.SGD([*enc.parameters(), *dec.parameters()], lr=0.05)
    x, y = torch.randn(32, 8), torch.randn(32, 8)
    totals = []
    with gradlens.Lens(runs_dir=runs_dir) as lens:
        for _ in range(4):
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            totals.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1e9)))
            opt.step()
    run = gradlens.open_run(lens.run_dir)
    assert list(_grad_norms(run).columns) == ["0.bias", "0.weight", "2.bias"]
    norm = run.table("scalars", filters=[("metric", "==", "grad_norm")]).sort_values("step")
    np.testing.assert_allclose(norm.value, totals, rtol=1e-5)


@pytest.mark.parametrize("optimizer", ["new", "kept"])
def test_a_replaced_head_names(runs_dir, optimizer):
    """``model.fc`` replaced at step 3. With a new optimizer (the old one gone), the new head
    is ``fc.weight``, as ``named_parameters()`` says; with the old optimizer kept and the new
    head added as a group, the old tensors (still stepped) keep ``fc.*`` and the new head is
    ``fc.*#2``; the backbone's names never change."""
    torch.manual_seed(0)
    model = nn.Sequential()
    model.body, model.fc = nn.Linear(8, 8), nn.Linear(8, 4)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    with gradlens.Lens(runs_dir=runs_dir) as lens:
        for step in range(6):
            if step == 3:
                model.fc = nn.Linear(8, 3)
                if optimizer == "new":
                    del opt
                    gc.collect()
                    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
                else:
                    opt.add_param_group({"params": model.fc.parameters()})
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    table = _grad_norms(gradlens.open_run(lens.run_dir))
    body = ["body.bias", "body.weight"]
    if optimizer == "new":
        assert list(table.columns) == [*body, "fc.bias", "fc.weight"]
        assert table.notna().all().all()  # one series per name, every step
    else:
        assert list(table.columns) == [*body, "fc.bias", "fc.bias#2", "fc.weight", "fc.weight#2"]
        assert (table.loc[3:, ["fc.bias", "fc.weight"]] == 0).all().all()  # no gradient now
        assert table.loc[3:, ["fc.bias#2", "fc.weight#2"]].gt(0).all().all()


def test_parameters_frozen_later_stop_being_recorded(runs_dir):
    """A backbone frozen mid-run (``requires_grad_(False)``) while still in the optimizer is
    no longer read as a zero gradient every step: its rows stop within ``FROZEN_EVERY``
    steps, the head's go on unchanged."""
    from gradlens.capture.tracking import _Membership

    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 5), torch.randint(0, 3, (32,))
    steps, frozen_at = 30, 5
    with gradlens.Lens(runs_dir=runs_dir) as lens:
        for step in range(steps):
            if step == frozen_at:
                model[0].requires_grad_(False)
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    table = _grad_norms(gradlens.open_run(lens.run_dir))
    assert table["2.weight"].notna().all() and len(table) == steps
    backbone = table["0.weight"].dropna()
    assert (backbone.loc[frozen_at:] == 0).all()  # read as 0 only until the next look
    assert frozen_at <= backbone.index.max() < frozen_at + _Membership.FROZEN_EVERY
