"""‖Δθ‖ read off the optimizer's state (SGD, Adam, AdamW) against the measured change
θ_after − θ_before (float64), the copy path's lifetime, and training left bitwise unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradlens
from gradlens.analysis.objective import Objective, batches_from_data
from gradlens.capture import updates
from gradlens.capture.norms import UPDATE_SOURCES, NormSignal
from gradlens.capture.signals import StepView

STEPS = 30

# (optimizer, per-group options: two groups with different lrs and hyperparameters)
SGD, ADAM, ADAMW = torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW
CONFIGS = {
    "sgd-momentum-damp-wd": (SGD, {"momentum": 0.9, "dampening": 0.1, "weight_decay": 1e-2}),
    "sgd-nesterov-wd": (SGD, {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-2}),
    "sgd-nesterov-max": (SGD, {"momentum": 0.5, "nesterov": True, "maximize": True}),
    "sgd-plain-wd-max": (SGD, {"weight_decay": 5e-3, "maximize": True}),
    "sgd-momentum-foreach": (SGD, {"momentum": 0.9, "weight_decay": 1e-3, "foreach": True}),
    "sgd-nesterov-loop": (
        SGD, {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-3, "foreach": False}
    ),
    "adam-l2-amsgrad": (ADAM, {"weight_decay": 1e-2, "amsgrad": True}),
    "adam-max-loop": (ADAM, {"maximize": True, "foreach": False}),
    "adam-fused": (ADAM, {"weight_decay": 1e-3, "fused": True}),
    "adamw": (ADAMW, {"weight_decay": 0.1}),
    "adamw-amsgrad-max": (ADAMW, {"weight_decay": 0.05, "amsgrad": True, "maximize": True}),
    "adamw-fused": (ADAMW, {"weight_decay": 0.1, "fused": True}),
    "adamw-loop": (ADAMW, {"weight_decay": 0.1, "amsgrad": True, "foreach": False}),
}  # fmt: skip


class _Net(nn.Module):
    """Two layers; ``extra`` gets a gradient on even steps only, ``unused`` never."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(6, 16).to(dtype)
        self.b = nn.Linear(16, 3).to(dtype)
        self.extra = nn.Parameter(0.3 * torch.randn(3, dtype=dtype))
        self.unused = nn.Parameter(0.3 * torch.randn(4, dtype=dtype))

    def forward(self, x: torch.Tensor, step: int) -> torch.Tensor:
        out = self.b(torch.tanh(self.a(x)))
        return out + self.extra if step % 2 == 0 else out


def _optimizer(net: _Net, kind: type, options: dict, lr: float) -> torch.optim.Optimizer:
    first = [net.a.weight, net.a.bias, net.unused]
    second = [net.b.weight, net.b.bias, net.extra]
    scale = 0.1 if kind is torch.optim.SGD else 1.0
    groups = [{"params": first, "lr": 3 * lr}, {"params": second, "lr": lr * scale}]
    return kind(groups, lr=lr, **options)


def _run(name: str, dtype: torch.dtype, *, from_state: bool = True):
    """Per step: (the signal's update norms, the measured ‖θ_after − θ_before‖ in float64,
    last_update(), the measured Δθ)."""
    kind, options = CONFIGS[name]
    net = _Net(dtype)
    params = [net.a.weight, net.a.bias, net.b.weight, net.b.bias, net.extra, net.unused]
    lr = 0.05 if kind is torch.optim.SGD else 1e-2
    opt = _optimizer(net, kind, options, lr)
    signal = NormSignal(params, torch.device("cpu"), updates_from="optimizer")
    base = [group["lr"] for group in opt.param_groups]
    g = torch.Generator().manual_seed(1)
    rows = []
    for step in range(STEPS):
        for group, lr0 in zip(opt.param_groups, base, strict=True):  # an LR schedule
            group["lr"] = lr0 / (1 + 0.05 * step)
        x = torch.randn(32, 6, generator=g, dtype=dtype)
        y = torch.randint(0, 3, (32,), generator=g)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x, step), y).backward()
        view = StepView(params, [], torch.device("cpu"), optimizer=opt if from_state else None)
        with torch.no_grad():  # as the recorder calls it
            signal.before(view)
        assert (signal._from_state is not None) == from_state
        before = [p.detach().clone() for p in params]
        opt.step()
        with torch.no_grad():
            got = signal.after(view)["update_norm"]
        moved = [(p.detach() - b).double() for p, b in zip(params, before, strict=True)]
        rows.append(
            (got.double(), torch.stack([m.norm() for m in moved]), signal.last_update(), moved)
        )
    assert max(p.abs().max().item() for p in params) < 1  # (the tests' one-ulp floor)
    return rows


@pytest.mark.parametrize("name", list(CONFIGS))
def test_update_norms_from_state_match_the_measured_change(name):
    """rtol 1e-5, with a floor of one ulp of θ: the optimizer rounds θ_before + Δθ with one
    fused multiply-add that Δθ computed apart cannot always undo (≈0.5 % of entries land one
    ulp off), which shows only on tiny tensors whose update is a few ulps of θ."""
    rows = _run(name, torch.float32)
    got = torch.stack([r[0] for r in rows]).numpy()
    want = torch.stack([r[1] for r in rows]).numpy()
    assert (want[:, -1] == 0).all() and (got[:, -1] == 0).all()  # `unused`: never a gradient
    assert (want[1::2, -2] == 0).all() and (got[1::2, -2] == 0).all()  # `extra`: odd steps
    assert (want[::2, -2] > 0).all() and (got[::2, -2] > 0).all()
    ulp = float(np.spacing(np.float32(1.0)))  # |θ| < 1 here (checked in _run)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=ulp)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_update_from_state_is_exact_in_float64(name):
    """The formulas themselves: elementwise Δθ to 1e-10 when rounding is out of the way."""
    for got, want, delta, moved in _run(name, torch.float64):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=2e-7)  # float32 row
        for d, m in zip(delta, moved, strict=True):
            torch.testing.assert_close(d, m, rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("name", ["sgd-nesterov-wd", "adamw-amsgrad-max"])
def test_last_update_is_the_measured_change_in_float32(name):
    for _, _, delta, moved in _run(name, torch.float32):
        for d, m in zip(delta, moved, strict=True):
            torch.testing.assert_close(d.double(), m, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("name", ["adam-fused", "adamw", "adamw-amsgrad-max"])
def test_step_counts_on_the_device_path(name, monkeypatch):
    """Fused Adam on an accelerator keeps its step counts there: the bias corrections are then
    device scalars (run here on CPU tensors by pretending they are not on the host)."""
    monkeypatch.setattr(updates, "_steps_on_host", lambda steps: False)
    rows = _run(name, torch.float32)
    got = torch.stack([r[0] for r in rows]).numpy()
    np.testing.assert_allclose(got, torch.stack([r[1] for r in rows]).numpy(), rtol=1e-5)


def test_copy_path_agrees_and_holds_its_copy_for_one_step_only():
    state = _run("adamw-amsgrad-max", torch.float32)
    copy = _run("adamw-amsgrad-max", torch.float32, from_state=False)
    for (a, _, _, _), (b, want, _, _) in zip(state, copy, strict=True):
        np.testing.assert_allclose(b.numpy(), want.numpy(), rtol=1e-6)  # θ_after − θ_before
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5)


def _one_step(opt, params, *, keep: bool, signal: NormSignal | None = None):
    signal = signal or NormSignal(params, torch.device("cpu"), updates_from="optimizer")
    for p in params:
        p.grad = torch.ones_like(p)
    v = StepView(params, [], torch.device("cpu"), optimizer=opt, keep_update=keep)
    with torch.no_grad():
        signal.before(v)
    copy = signal._saved
    before = [p.detach().clone() for p in params]
    opt.step()
    with torch.no_grad():
        signal.after(v)
    return signal, copy, [p.detach() - b for p, b in zip(params, before, strict=True)]


def test_copy_is_freed_after_the_step_unless_a_probe_wants_the_update():
    params = [nn.Parameter(torch.randn(5, 4)), nn.Parameter(torch.randn(4))]
    opt = torch.optim.RMSprop(params, lr=1e-2)  # not read off its state: the copy path
    signal, copy, _ = _one_step(opt, params, keep=False)
    assert copy is not None and signal._saved is None and signal.last_update() is None
    signal, copy, moved = _one_step(opt, params, keep=True)
    assert copy is not None and signal._saved is None
    for d, m in zip(signal.last_update(), moved, strict=True):
        torch.testing.assert_close(d, m, rtol=0, atol=0)


def test_state_path_holds_nothing_and_keeps_the_update_for_probes():
    params = [nn.Parameter(torch.randn(5, 4)), nn.Parameter(torch.randn(4))]
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    signal, copy, moved = _one_step(opt, params, keep=True)
    assert copy is None and signal._saved is None
    for d, m in zip(signal.last_update(), moved, strict=True):
        torch.testing.assert_close(d, m)
    signal, copy, _ = _one_step(opt, params, keep=False)
    assert copy is None and signal.last_update() is None


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: torch.optim.RMSprop(ps),
        lambda ps: torch.optim.Adam(ps, capturable=True),
        lambda ps: torch.optim.Adam(ps, differentiable=True),
        lambda ps: type("MyAdam", (torch.optim.Adam,), {})(ps),  # a subclass may change step()
        lambda ps: torch.optim.SGD(ps[:1], lr=0.1),  # does not own every recorded tensor
    ],
    ids=["rmsprop", "capturable", "differentiable", "subclass", "not-owned"],
)
def test_unsupported_optimizers_use_the_copy(make):
    params = [nn.Parameter(torch.randn(3)), nn.Parameter(torch.randn(2))]
    signal = NormSignal(params, torch.device("cpu"), updates_from="optimizer")
    signal.before(StepView(params, [], torch.device("cpu"), optimizer=make(params)))
    assert signal._from_state is None and signal._saved is not None


def test_amp_steps_and_low_precision_parameters_use_the_copy():
    params = [nn.Parameter(torch.randn(3))]
    opt = torch.optim.Adam(params)
    signal = NormSignal(params, torch.device("cpu"), updates_from="optimizer")
    for view in ({"grad_scale": torch.tensor(2.0)}, {"skipped": torch.tensor(0.0)}):
        signal.before(StepView(params, [], torch.device("cpu"), optimizer=opt, **view))
        assert signal._from_state is None
    half = [nn.Parameter(torch.randn(3, dtype=torch.bfloat16))]
    signal = NormSignal(half, torch.device("cpu"), updates_from="optimizer")
    signal.before(StepView(half, [], torch.device("cpu"), optimizer=torch.optim.SGD(half, lr=1)))
    assert signal._from_state is None


def test_lr_in_a_cpu_tensor_is_read_off_the_state():
    rows_param = [nn.Parameter(torch.randn(4, 3))]
    opt = torch.optim.Adam(rows_param, lr=torch.tensor(0.01))
    signal, copy, moved = _one_step(opt, rows_param, keep=True)
    assert copy is None
    torch.testing.assert_close(signal.last_update()[0], moved[0])


# -- training is unchanged -----------------------------------------------------------------------


def _train(make, watched: bool, runs_dir, source: str = "copy") -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    opt = make(model.parameters())
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 6, generator=g), torch.randint(0, 3, (64,), generator=g)

    def loop() -> None:
        for _ in range(25):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()

    if watched:
        lens = gradlens.Lens(
            model, opt, runs_dir=runs_dir, param_every=1, every=10, updates_from=source
        )
        with lens:
            loop()
    else:
        loop()
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2),
        lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1, amsgrad=True),
    ],
    ids=["sgd-momentum", "adamw"],
)
@pytest.mark.parametrize("source", UPDATE_SOURCES)
def test_training_is_bitwise_unchanged(make, source, runs_dir):
    plain = _train(make, False, runs_dir)
    watched = _train(make, True, runs_dir, source)
    for key, value in plain.items():
        assert torch.equal(value, watched[key]), key


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1),  # from the state
        lambda ps: torch.optim.RMSprop(ps, lr=1e-2),  # from a copy held for the probe's step
    ],
    ids=["adamw", "rmsprop"],
)
@pytest.mark.parametrize("source", UPDATE_SOURCES)
def test_a_probe_steps_back_along_last_update(make, source, runs_dir):
    """The landscape probe's ``update`` direction at α = −1 is the model before the step."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    opt = make(model.parameters())
    g = torch.Generator().manual_seed(1)
    options = {"every": 7, "dims": 1, "steps": 3, "directions": "update", "roughness": 0}
    seen, before = [], None
    lens = gradlens.Lens(
        model, opt, runs_dir=runs_dir, probe_options={"landscape": options}, updates_from=source
    )
    with lens:
        for step in range(7):
            x = torch.randn(32, 6, generator=g)
            y = (x[:, 0] > 0).long()
            seen.append((x, y))
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            if step == 6:  # the probe runs after this step (not a param_every step)
                before = {k: v.clone() for k, v in model.state_dict().items()}
            opt.step()
    loss = gradlens.open_run(lens.run_dir).table("landscape")
    loss = loss[loss.metric == "loss"].sort_values("alpha")
    assert loss["alpha"].tolist() == [-1.0, 0.0, 1.0]
    model.load_state_dict(before)
    objective = Objective(model, batches_from_data(seen[:2], F.cross_entropy), "eval")
    with objective.isolated(), torch.no_grad():
        want = objective.loss().item()
    assert loss["value"].iloc[0] == pytest.approx(want, rel=1e-5)


def test_hyperparameters_are_read_at_each_step_also_after_load_state_dict():
    """``load_state_dict`` replaces the group dicts; a learning rate of 0 moves nothing."""
    params = [nn.Parameter(torch.randn(5, 4)), nn.Parameter(torch.randn(4))]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    signal = _one_step(opt, params, keep=True)[0]
    saved = opt.state_dict()
    saved["param_groups"][0]["lr"] = 3e-2
    opt.load_state_dict(saved)
    signal, copy, moved = _one_step(opt, params, keep=True, signal=signal)
    assert copy is None and opt.param_groups[0]["lr"] == 3e-2
    for d, m in zip(signal.last_update(), moved, strict=True):
        torch.testing.assert_close(d, m)
    opt.param_groups[0]["lr"] = 0.0
    signal, copy, moved = _one_step(opt, params, keep=True, signal=signal)
    assert copy is None and all(not m.any() for m in moved)
    assert all(not d.any() for d in signal.last_update())


def test_lr_in_an_accelerator_tensor_uses_the_copy():
    """Reading it would be a host sync (a meta tensor stands in for a CUDA one here)."""
    params = [nn.Parameter(torch.randn(3))]
    opt = torch.optim.Adam(params, lr=0.01)
    opt.param_groups[0]["lr"] = torch.tensor(0.01, device="meta")
    signal = NormSignal(params, torch.device("cpu"), updates_from="optimizer")
    signal.before(StepView(params, [], torch.device("cpu"), optimizer=opt))
    assert signal._from_state is None and signal._saved is not None
