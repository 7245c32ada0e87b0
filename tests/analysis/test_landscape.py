"""loss_landscape against exact slices, two engines, and a model that must not change."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from gradlens.analysis.landscape import (
    CHECK_POINTS,
    filter_directions,
    landscape_rows,
    loss_landscape,
)
from gradlens.analysis.objective import Objective, batches_from_data
from gradlens.store.schema import SCHEMAS, to_arrow

F64 = torch.float64


class Quadratic(nn.Module):
    """Outputs θ = (W.flatten(), b) itself; the loss function scores it."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(4, 5, generator=g, dtype=F64))
        self.bias = nn.Parameter(torch.randn(4, generator=g, dtype=F64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.weight.reshape(-1), self.bias]).expand(x.shape[0], -1)


def _flat(d: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([d["weight"].reshape(-1), d["bias"]])


def _spd(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(n, n, generator=g, dtype=F64)
    return m @ m.T / n + 0.1 * torch.eye(n, dtype=F64)


def _quadratic_loss(a: torch.Tensor, star: torch.Tensor):
    def loss_fn(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        r = out - star
        return 0.5 * ((r @ a) * r).sum(-1).mean()

    return loss_fn


def _quadratic_case(seed: int = 0):
    model = Quadratic(seed)
    a = _spd(24, seed + 1)
    star = torch.randn(24, generator=torch.Generator().manual_seed(seed + 2), dtype=F64)
    data = (torch.zeros(3, 1, dtype=F64), torch.zeros(3))
    return model, a, star, data


@pytest.mark.parametrize("batch_points", [1, 7])
@pytest.mark.parametrize("ignore", ["biasbn", "none"])
def test_quadratic_slices_are_exact(batch_points, ignore):
    model, a, star, data = _quadratic_case()
    loss_fn = _quadratic_loss(a, star)
    theta = _flat(dict(model.named_parameters())).detach()
    g = a @ (theta - star)
    l0 = float(0.5 * (theta - star) @ a @ (theta - star))
    d1, d2 = (_flat(d) for d in filter_directions(model, 2, seed=3, ignore=ignore))
    if ignore == "biasbn":
        assert torch.equal(d1[-4:], torch.zeros(4, dtype=F64))

    line = loss_landscape(
        model,
        loss_fn,
        data,
        dims=1,
        steps=9,
        span=0.7,
        seed=3,
        ignore=ignore,
        batch_points=batch_points,
        roughness=0,
    )
    al = torch.tensor(line["alpha"].to_numpy())
    exact = l0 + al * (g @ d1) + 0.5 * al**2 * (d1 @ a @ d1)
    np.testing.assert_allclose(line["loss"], exact.numpy(), rtol=1e-12, atol=1e-12)
    assert line["beta"].isna().all() and line["accuracy"].isna().all()
    assert line.attrs["slope"]["alpha"] == pytest.approx(float(g @ d1), rel=1e-9)
    assert line.attrs["curvature"]["alpha"] == pytest.approx(float(d1 @ a @ d1), rel=1e-9)

    plane = loss_landscape(
        model,
        loss_fn,
        data,
        dims=2,
        steps=(5, 7),
        span=(0.5, 1.5),
        seed=3,
        ignore=ignore,
        batch_points=batch_points,
        roughness=0,
    )
    al, be = (torch.tensor(plane[c].to_numpy()) for c in ("alpha", "beta"))
    exact = (
        l0
        + al * (g @ d1)
        + be * (g @ d2)
        + 0.5 * al**2 * (d1 @ a @ d1)
        + al * be * (d1 @ a @ d2)
        + 0.5 * be**2 * (d2 @ a @ d2)
    )
    np.testing.assert_allclose(plane["loss"], exact.numpy(), rtol=1e-12, atol=1e-12)
    assert plane.attrs["centre_loss"] == pytest.approx(l0, rel=1e-14)
    assert plane.attrs["curvature"]["beta"] == pytest.approx(float(d2 @ a @ d2), rel=1e-9)
    assert plane.attrs["slice"] == "filter-2d"
    assert plane.attrs["cosine"] == pytest.approx(float(d1 @ d2 / d1.norm() / d2.norm()))


def test_linear_loss_grid_is_aligned():
    """L = aᵀθ: f(α, β) = L₀ + α aᵀd₁ + β aᵀd₂ on a non-square grid (a zig-zag offset fails)."""
    model, _, _, data = _quadratic_case(4)
    a = torch.randn(24, generator=torch.Generator().manual_seed(9), dtype=F64)
    df = loss_landscape(
        model,
        lambda out, _: (out @ a).mean(),
        data,
        dims=2,
        steps=(3, 9),
        span=(1.0, 0.25),
        seed=1,
        roughness=0,
    )
    d1, d2 = (_flat(d) for d in filter_directions(model, 2, seed=1))
    l0 = float(a @ _flat(dict(model.named_parameters())).detach())
    exact = l0 + df["alpha"] * float(a @ d1) + df["beta"] * float(a @ d2)
    np.testing.assert_allclose(df["loss"], exact, rtol=1e-12, atol=1e-12)
    assert sorted(set(df["beta"])) == pytest.approx(np.linspace(-0.25, 0.25, 9).tolist())


def test_roughness_zero_at_the_minimum_of_a_quadratic():
    model, a, _, data = _quadratic_case(2)
    star = _flat(dict(model.named_parameters())).detach().clone()  # θ₀ = θ*: the minimum
    df = loss_landscape(model, _quadratic_loss(a, star), data, steps=5, span=0.5, roughness=6)
    assert df.attrs["roughness_variations"] == pytest.approx([1 / 0.5] * 6, rel=1e-9)
    assert df.attrs["roughness"] == pytest.approx(0.0, abs=1e-9)
    assert df.attrs["slope"]["alpha"] == pytest.approx(0.0, abs=1e-12)


def test_line_between_quadratic_checkpoints_is_the_exact_parabola():
    model, a, star, data = _quadratic_case(5)
    other = Quadratic(seed=6)
    loss_fn = _quadratic_loss(a, star)
    ta, tb = (_flat(dict(m.named_parameters())).detach() for m in (model, other))
    df = loss_landscape(
        model, loss_fn, data, directions="line", other=other, steps=9, span=1.0, roughness=0
    )
    t = torch.tensor(df["alpha"].to_numpy())
    delta = tb - ta
    la = 0.5 * (ta - star) @ a @ (ta - star)
    exact = la + t * ((a @ (ta - star)) @ delta) + 0.5 * t**2 * (delta @ a @ delta)
    np.testing.assert_allclose(df["loss"], exact.numpy(), rtol=1e-12, atol=1e-12)
    lb = float(0.5 * (tb - star) @ a @ (tb - star))
    assert df.loc[df.alpha == 1.0, "loss"].item() == pytest.approx(lb, rel=1e-12)
    assert df.attrs["slice"] == "line-1d" and df.attrs["directions"] == ["line"]


def _bn_mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    with torch.no_grad():  # distinct running statistics
        model.train()
        for _ in range(20):
            model(torch.randn(32, 6) * (1 + 2 * seed) + 2 * seed)
    return model


def test_line_to_another_checkpoint_hits_its_loss_buffers_included():
    a, b = _bn_mlp(0), _bn_mlp(1)
    x, y = torch.randn(40, 6), torch.randint(0, 3, (40,))
    df = loss_landscape(
        a, F.cross_entropy, (x, y), directions="line", other=b.state_dict(), steps=5, roughness=0
    )
    a.eval(), b.eval()
    with torch.no_grad():
        la, lb = F.cross_entropy(a(x), y).item(), F.cross_entropy(b(x), y).item()
        mixed = copy.deepcopy(a)  # b's weights with a's BatchNorm statistics
        mixed.load_state_dict(
            {k: v for k, v in b.state_dict().items() if "running" not in k}, strict=False
        )
        lmixed = F.cross_entropy(mixed(x), y).item()
    assert abs(lmixed - lb) > 1e-2  # so interpolating only the weights would miss
    assert df.loc[df.alpha == 0.0, "loss"].item() == la
    assert df.loc[df.alpha == 1.0, "loss"].item() == pytest.approx(lb, rel=1e-5)


def _snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "training": [m.training for m in model.modules()],
        "ids": [id(p) for p in model.parameters()],
        "rng": torch.get_rng_state(),
    }


def _assert_same(before: dict, model: nn.Module) -> None:
    after = _snapshot(model)
    for key, value in before["state"].items():
        assert torch.equal(value, after["state"][key]), key
    for g0, g1 in zip(before["grads"], after["grads"]):
        assert (g0 is None and g1 is None) or torch.equal(g0, g1)
    for key in ("requires_grad", "training", "ids"):
        assert before[key] == after[key], key
    assert torch.equal(before["rng"], after["rng"])


def _messy_model() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.Dropout(0.3), nn.Linear(16, 3))
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    F.cross_entropy(model(x), y).backward()  # grads present
    model[3].bias.requires_grad_(False)  # a frozen parameter
    model[2].eval()  # mixed train/eval flags
    return model, x, y


@pytest.mark.parametrize(("mode", "batch_points"), [("eval", 1), ("eval", 6), ("train", 6)])
def test_model_unchanged_bit_for_bit(mode, batch_points):
    model, x, y = _messy_model()
    before = _snapshot(model)
    df = loss_landscape(
        model,
        F.cross_entropy,
        (x, y),
        dims=2,
        steps=5,
        mode=mode,
        batch_points=batch_points,
        roughness=2,
    )
    assert df["loss"].notna().all()
    _assert_same(before, model)


@pytest.mark.parametrize(("mode", "batch_points"), [("train", 1), ("eval", 6)])
def test_model_unchanged_when_evaluation_raises(mode, batch_points):
    model, x, y = _messy_model()
    before = _snapshot(model)
    calls = []

    check = 1 + CHECK_POINTS  # the float32 loop on the check points (after a warm-up)

    def exploding(out, target):
        calls.append(1)
        if len(calls) >= check + 3:  # the vmapped pass fails, then the loop it falls back to
            raise RuntimeError("boom mid-grid")
        return F.cross_entropy(out, target)

    with pytest.raises(RuntimeError, match="boom mid-grid"):
        loss_landscape(
            model,
            exploding,
            (x, y),
            dims=2,
            steps=5,
            mode=mode,
            batch_points=batch_points,
            roughness=0,
        )
    assert len(calls) == check + 3 + (batch_points > 1)
    _assert_same(before, model)


def test_nonfinite_losses_are_kept_and_counted():
    model, _, _, data = _quadratic_case(3)
    (d,) = filter_directions(model, 1, seed=0)
    w0, d0 = model.weight[0, 0].item(), d["weight"][0, 0].item()

    def log_loss(out, target):  # log((α + 0.3)·|d₀|): NaN for α < -0.3
        return torch.log(math.copysign(1.0, d0) * (out[:, 0] - (w0 - 0.3 * d0))).mean()

    df = loss_landscape(model, log_loss, data, steps=9, roughness=0)
    assert df.attrs["nonfinite"] == 3 == int(np.isnan(df["loss"]).sum())
    assert np.isnan(df.loc[df.alpha <= -0.5, "loss"]).all()
    assert np.isfinite(df.attrs["curvature"]["alpha"])


class _Branchy(nn.Module):
    """Data-dependent control flow: vmap cannot trace it, the loop can."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc(x)
        return out if out.sum() > 0 else -out


class _SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 4 * 4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)
        return self.fc(out.flatten(1))


def _engines_case(name: str):
    torch.manual_seed(1)
    if name == "mlp":
        model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
        return model, (torch.randn(24, 6), torch.randint(0, 3, (24,))), "eval", "vmap"
    if name == "cnn":
        model = _SmallCNN()
        return model, (torch.randn(8, 3, 8, 8), torch.randint(0, 4, (8,))), "eval", "vmap"
    if name == "branchy":
        return _Branchy(), (torch.randn(24, 6), torch.randint(0, 3, (24,))), "eval", "loop"
    return _bn_mlp(0), (torch.randn(24, 6), torch.randint(0, 3, (24,))), "train", "loop"


@pytest.mark.parametrize("name", ["mlp", "cnn", "branchy", "bn-train"])
def test_batched_and_looped_agree(name):
    model, data, mode, engine = _engines_case(name)
    kwargs = dict(dims=2, steps=7, span=0.8, mode=mode, roughness=0)
    looped = loss_landscape(model, F.cross_entropy, data, batch_points=1, **kwargs)
    batched = loss_landscape(model, F.cross_entropy, data, batch_points=10, **kwargs)
    assert looped.attrs["engine"] == "loop"
    assert batched.attrs["engine"] == engine
    assert (batched.attrs["fallback"] is None) == (engine == "vmap")
    np.testing.assert_allclose(batched["loss"], looped["loss"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(batched["accuracy"], looped["accuracy"], atol=1 / len(data[1]))


def test_channels_last_and_autocast_paths():
    model, data, _, _ = _engines_case("cnn")
    plain = loss_landscape(
        model, F.cross_entropy, data, dims=2, steps=5, roughness=0, batch_points=1
    )
    nhwc = loss_landscape(
        model,
        F.cross_entropy,
        data,
        dims=2,
        steps=5,
        roughness=0,
        batch_points=5,
        channels_last=True,
    )
    np.testing.assert_allclose(nhwc["loss"], plain["loss"], rtol=1e-5, atol=1e-6)
    bf16 = loss_landscape(
        model, F.cross_entropy, data, dims=2, steps=5, roughness=0, dtype=torch.bfloat16
    )
    np.testing.assert_allclose(bf16["loss"], plain["loss"], rtol=5e-2)
    assert bf16.attrs["dtype"] == "bfloat16"


def test_centre_is_the_model_loss_over_ragged_batches():
    model, _, _, _ = _engines_case("mlp")
    x, y = torch.randn(30, 6), torch.randint(0, 3, (30,))
    parts = [(x[:17], y[:17]), (x[17:], y[17:])]
    df = loss_landscape(model, F.cross_entropy, parts, steps=5, batch_points=1, roughness=0)
    with torch.no_grad():
        want = Objective(model, batches_from_data(parts, F.cross_entropy)).loss()
        accuracy = (model(x).argmax(1) == y).double().mean().item()
    centre = df.loc[df.alpha == 0.0]
    assert centre["loss"].item() == want.item()
    assert centre["accuracy"].item() == pytest.approx(accuracy)


def test_accuracy_for_language_model_logits_and_nan_for_regression():
    torch.manual_seed(0)
    lm = nn.Sequential(nn.Embedding(11, 8), nn.Linear(8, 11))
    idx, targets = torch.randint(0, 11, (4, 6)), torch.randint(0, 11, (4, 6))
    targets[0, :2] = -100  # ignored positions

    def lm_loss(out, t):
        return F.cross_entropy(out.flatten(0, 1), t.flatten())

    df = loss_landscape(lm, lm_loss, (idx, targets), steps=3, roughness=0)
    with torch.no_grad():
        pred = lm(idx).argmax(-1)
    mask = targets >= 0
    want = ((pred == targets) & mask).sum().item() / mask.sum().item()
    assert df.loc[df.alpha == 0.0, "accuracy"].item() == pytest.approx(want)

    reg = nn.Linear(3, 2)
    df = loss_landscape(
        reg, F.mse_loss, (torch.randn(8, 3), torch.randn(8, 2)), steps=3, roughness=0
    )
    assert df["accuracy"].isna().all()
    assert "accuracy" not in landscape_rows(df, 0)["landscape"]["metric"]


def test_update_direction_reaches_theta_plus_update():
    model, data, _, _ = _engines_case("mlp")
    g = torch.Generator().manual_seed(2)
    update = {n: 0.1 * torch.randn(p.shape, generator=g) for n, p in model.named_parameters()}
    df = loss_landscape(
        model,
        F.cross_entropy,
        data,
        dims=2,
        directions="update",
        update=update,
        steps=3,
        roughness=0,
    )
    assert df.attrs["directions"] == ["update", "filter"] and df.attrs["slice"] == "update-2d"
    moved = {n: p.detach() + update[n] for n, p in model.named_parameters()}
    with torch.no_grad():
        want = F.cross_entropy(functional_call(model, moved, (data[0],)), data[1]).item()
    got = df.loc[(df.alpha == 1.0) & (df.beta == 0.0), "loss"].item()
    assert got == pytest.approx(want, rel=1e-6)


def test_filter_normalization_is_scale_invariant_under_batchnorm():
    """Scaling a conv's filters before a train-mode BatchNorm changes nothing: f(α) too."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=False),
        nn.BatchNorm2d(4, eps=1e-12),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 3),
    )
    data = (torch.randn(16, 3, 8, 8), torch.randint(0, 3, (16,)))
    scaled = copy.deepcopy(model)
    with torch.no_grad():
        scaled[0].weight.mul_(torch.tensor([3.0, 0.5, 7.0, 2.0]).view(4, 1, 1, 1))
    kwargs = dict(steps=7, mode="train", seed=5, roughness=0)
    a = loss_landscape(model, F.cross_entropy, data, **kwargs)
    b = loss_landscape(scaled, F.cross_entropy, data, **kwargs)
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
    c = loss_landscape(scaled, F.cross_entropy, data, norm="none", **kwargs)
    assert np.abs(c["loss"] - a["loss"]).max() > 1e-3  # un-normalized directions are not


def test_rows_fit_the_landscape_table():
    model, data, _, _ = _engines_case("mlp")
    df = loss_landscape(model, F.cross_entropy, data, dims=2, steps=3, roughness=2)
    rows = landscape_rows(df, step=12)["landscape"]
    assert set(rows) == set(SCHEMAS["landscape"].names)
    table = to_arrow("landscape", rows)
    summaries = [
        "roughness",
        "nonfinite",
        "check_error",
        "slope_alpha",
        "slope_beta",
        "curvature_alpha",
        "curvature_beta",
    ]
    assert table.num_rows == 2 * 9 + len(summaries)
    assert rows["metric"][-len(summaries) :] == summaries
    assert all(math.isnan(v) for v in rows["alpha"][-len(summaries) :])
    assert set(rows["step"]) == {12} and set(rows["slice"]) == {"filter-2d"}
    assert rows["value"][-3] == df.attrs["slope"]["beta"]


def test_arguments_are_checked():
    model, data, _, _ = _engines_case("mlp")
    with pytest.raises(ValueError, match="odd"):
        loss_landscape(model, F.cross_entropy, data, steps=10)
    with pytest.raises(ValueError, match="dims"):
        loss_landscape(model, F.cross_entropy, data, dims=3)
    with pytest.raises(ValueError, match="directions must be one of"):
        loss_landscape(model, F.cross_entropy, data, directions="pca")
    with pytest.raises(ValueError, match="other="):
        loss_landscape(model, F.cross_entropy, data, directions="line")
    with pytest.raises(ValueError, match="needs 2 directions"):
        loss_landscape(model, F.cross_entropy, data, dims=2, directions=[{}])


def test_hessian_axes_of_a_quadratic_are_its_eigenvectors():
    pytest.importorskip("gradlens.analysis.hessian")
    model = Quadratic(0)
    theta = _flat(dict(model.named_parameters())).detach()
    q, _ = torch.linalg.qr(
        torch.randn(24, 24, generator=torch.Generator().manual_seed(1), dtype=F64)
    )
    lam = torch.linspace(0.1, 2.0, 24, dtype=F64)
    lam[-1], lam[-2] = 9.0, 5.0
    a = q @ torch.diag(lam) @ q.T
    data = (torch.zeros(2, 1, dtype=F64), torch.zeros(2))
    df = loss_landscape(
        model,
        _quadratic_loss(a, theta.clone()),
        data,
        dims=2,
        directions="hessian",
        steps=5,
        span=0.5,
        roughness=0,
    )
    exact = 0.5 * (9.0 * df["alpha"] ** 2 + 5.0 * df["beta"] ** 2)
    np.testing.assert_allclose(df["loss"], exact, rtol=1e-3, atol=1e-9)
    assert df.attrs["eigenvalues"] == pytest.approx([9.0, 5.0], rel=1e-3)
    assert df.attrs["curvature"]["alpha"] == pytest.approx(9.0, rel=1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_engines_agree_with_the_cpu():
    model, (x, y), _, _ = _engines_case("cnn")
    kwargs = dict(dims=2, steps=5, roughness=2)
    cpu = loss_landscape(model, F.cross_entropy, (x, y), batch_points=1, **kwargs)
    model = model.cuda()
    data = (x.cuda(), y.cuda())
    rng = torch.cuda.get_rng_state()
    for options in ({"batch_points": 1}, {"batch_points": 5}, {"channels_last": True}):
        got = loss_landscape(model, F.cross_entropy, data, **kwargs, **options)
        np.testing.assert_allclose(got["loss"], cpu["loss"], rtol=2e-3)  # TF32 convolutions
    bf16 = loss_landscape(model, F.cross_entropy, data, dtype=torch.bfloat16, **kwargs)
    np.testing.assert_allclose(bf16["loss"], cpu["loss"], rtol=5e-2)
    assert torch.equal(torch.cuda.get_rng_state(), rng)


def test_automatic_engine_choice_and_memory_cap(monkeypatch):
    import gradlens.analysis.landscape.evaluate as evaluate_module

    model, (x, y), _, _ = _engines_case("mlp")
    small = loss_landscape(model, F.cross_entropy, (x, y), dims=2, steps=5, roughness=0)
    assert (small.attrs["engine"], small.attrs["batch_points"]) == ("vmap", 25)
    assert small.attrs["autotune"] is None  # too few points to time both engines
    tuned = loss_landscape(model, F.cross_entropy, (x, y), dims=2, steps=15, roughness=0)
    timing = tuned.attrs["autotune"]
    assert set(timing) == {"loop", "vmap"}
    assert tuned.attrs["engine"] == ("vmap" if timing["vmap"] < timing["loop"] else "loop")
    reference = loss_landscape(
        model, F.cross_entropy, (x, y), dims=2, steps=15, roughness=0, batch_points=1
    )
    np.testing.assert_allclose(tuned["loss"], reference["loss"], rtol=1e-5, atol=1e-6)
    big = (torch.randn(200, 6), torch.randint(0, 3, (200,)))
    assert loss_landscape(model, F.cross_entropy, big, steps=5, roughness=0).attrs["engine"] == (
        "loop"
    )
    # a point costs its flat parameters (652 B) + 4 × the largest activation (24×16 floats)
    monkeypatch.setattr(evaluate_module, "_CPU_BUDGET", 70_000)
    capped = loss_landscape(model, F.cross_entropy, (x, y), dims=2, steps=5, roughness=0)
    assert capped.attrs["engine"] == "vmap" and 8 <= capped.attrs["batch_points"] < 25
    np.testing.assert_allclose(capped["loss"], small["loss"], rtol=1e-5)
    monkeypatch.setattr(evaluate_module, "_CPU_BUDGET", 20_000)  # under 8 points: loop
    looped = loss_landscape(model, F.cross_entropy, (x, y), dims=2, steps=5, roughness=0)
    assert looped.attrs["engine"] == "loop"


def _naive_float32_losses(model, data, frame):
    """Copy θ + αd₁ + βd₂ into a copy of the model and run it: the float32 loop."""
    import copy

    clone = copy.deepcopy(model).eval()
    d1, d2 = filter_directions(model, 2, seed=0)
    theta = {n: p.detach().clone() for n, p in clone.named_parameters()}
    out = []
    with torch.no_grad():
        for a, b in zip(frame["alpha"], frame["beta"]):
            for n, p in clone.named_parameters():
                p.copy_(theta[n] + a * d1[n] + b * d2[n])
            out.append(float(F.cross_entropy(clone(data[0]), data[1])))
    return np.array(out)


@pytest.mark.parametrize("batch_points", [None, 1, 10])
def test_auto_records_its_engine_and_the_measured_check_error(batch_points):
    model, data, _, _ = _engines_case("cnn")
    df = loss_landscape(
        model, F.cross_entropy, data, dims=2, steps=7, roughness=0, batch_points=batch_points
    )
    attrs = df.attrs
    assert attrs["engine"] in ("vmap", "loop") and attrs["precision"] == "float32"
    assert attrs["check_points"] == CHECK_POINTS and attrs["check_tol"] == 1e-3
    naive = _naive_float32_losses(model, data, df)
    idx = sorted({0, 49 // 4, 49 // 2, (3 * 49) // 4, 48})
    expected = float(np.abs(df["loss"].to_numpy()[idx] - naive[idx]).max())
    # the recorded error is the slice's own values against the float32 loop (to rounding)
    assert attrs["check_error"] == pytest.approx(expected, abs=2e-6)
    assert attrs["check_error"] <= 1e-3
    np.testing.assert_allclose(df["loss"], naive, rtol=1e-5, atol=1e-5)


def test_auto_rejects_a_faster_precision_outside_tol(monkeypatch):
    import gradlens.analysis.landscape.precision as gl

    bf16 = gl.Precision("bfloat16", torch.bfloat16)
    monkeypatch.setattr(gl, "_candidates", lambda obj, dtype, cl: [gl.Precision("float32"), bf16])
    model, data, _, _ = _engines_case("mlp")
    kwargs = dict(dims=2, steps=5, roughness=0)
    strict = loss_landscape(model, F.cross_entropy, data, check_tol=1e-7, **kwargs)
    measured = strict.attrs["candidates"]
    assert set(measured) == {"float32", "bfloat16"}
    assert measured["bfloat16"]["error"] > 1e-7 and measured["float32"]["error"] <= 1e-7
    assert strict.attrs["precision"] == "float32" and strict.attrs["check_error"] <= 1e-6
    loose = loss_landscape(model, F.cross_entropy, data, check_tol=10.0, **kwargs)
    chosen = loose.attrs["precision"]
    seconds = {k: v["seconds_per_point"] for k, v in loose.attrs["candidates"].items()}
    assert chosen == min(seconds, key=seconds.get)  # both qualify: the faster one
    if chosen == "bfloat16":
        assert loose.attrs["check_error"] == pytest.approx(
            loose.attrs["candidates"]["bfloat16"]["error"], abs=1e-2
        )
