"""Landscape math against Li et al.'s code, closed forms and Wu et al.'s roughness index."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gradlens.functional.landscape import (
    central_differences,
    filter_normalized_direction,
    gaussian_direction,
    grid_coordinates,
    grid_points,
    normalize_direction,
    orthogonalize_filterwise,
    roughness_index,
    total_variation,
)


def _params() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.Flatten(), nn.Linear(6 * 4, 5), nn.LayerNorm(5)
    )
    return {n: p.detach() for n, p in model.named_parameters()}


def _li_reference(params: dict[str, torch.Tensor], seed: int, ignore: str) -> list[torch.Tensor]:
    """Li et al.'s create_random_direction + normalize_directions_for_weights, as coded."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        direction = [torch.randn(w.size()) for w in params.values()]
    for d, w in zip(direction, params.values()):
        if d.dim() <= 1:
            if ignore == "biasbn":
                d.fill_(0)
            else:
                d.copy_(w)
        else:
            for di, wi in zip(d, w):
                di.mul_(wi.norm() / (di.norm() + 1e-10))
    return direction


@pytest.mark.parametrize("ignore", ["biasbn", "none"])
def test_filter_directions_match_li_et_al(ignore):
    params = _params()
    ours = filter_normalized_direction(params, torch.Generator().manual_seed(123), ignore=ignore)
    for (name, got), want in zip(ours.items(), _li_reference(params, 123, ignore)):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7, msg=name)


def test_per_filter_norms_equal_the_weights_and_1d_rules():
    params = _params()
    d = filter_normalized_direction(params, torch.Generator().manual_seed(1))
    for name, w in params.items():
        if w.dim() > 1:
            got = d[name].reshape(w.shape[0], -1).norm(dim=1)
            torch.testing.assert_close(got, w.reshape(w.shape[0], -1).norm(dim=1), msg=name)
        else:
            assert torch.equal(d[name], torch.zeros_like(w)), name  # biases, BN, LayerNorm
    kept = filter_normalized_direction(params, torch.Generator().manual_seed(1), ignore="none")
    assert all(torch.equal(kept[n], w) for n, w in params.items() if w.dim() <= 1)


def test_other_normalizations():
    w = torch.randn(4, 3, 2)
    d = {"w": torch.randn(4, 3, 2)}
    layer = normalize_direction(d, {"w": w}, norm="layer")["w"]
    torch.testing.assert_close(layer.norm(), w.norm())
    dfilter = normalize_direction(d, {"w": w}, norm="dfilter")["w"]
    torch.testing.assert_close(dfilter.reshape(4, -1).norm(dim=1), torch.ones(4))
    torch.testing.assert_close(
        normalize_direction(d, {"w": w}, norm="dlayer")["w"].norm(), torch.tensor(1.0)
    )
    torch.testing.assert_close(normalize_direction(d, {"w": w}, norm="weight")["w"], d["w"] * w)
    assert torch.equal(normalize_direction(d, {"w": w}, norm="none")["w"], d["w"])
    with pytest.raises(ValueError, match="norm must be one of"):
        normalize_direction(d, {"w": w}, norm="unit")


def test_private_generator_leaves_global_rng_alone():
    params = _params()
    torch.manual_seed(7)
    state = torch.get_rng_state()
    a = filter_normalized_direction(params, torch.Generator().manual_seed(3))
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(99)  # another global seed: the same directions
    b = filter_normalized_direction(params, torch.Generator().manual_seed(3))
    assert all(torch.equal(a[n], b[n]) for n in a)
    c = filter_normalized_direction(params, torch.Generator().manual_seed(4))
    assert not torch.equal(a["0.weight"], c["0.weight"])


def test_gaussian_draws_are_gaussian_not_uniform():
    # loss-landscapes draws U[0, 1): all positive, mean 0.5
    d = gaussian_direction({"w": torch.zeros(200, 50)}, torch.Generator().manual_seed(0))["w"]
    assert abs(float(d.mean())) < 0.02 and abs(float(d.std()) - 1) < 0.02
    assert float((d < 0).float().mean()) == pytest.approx(0.5, abs=0.02)


def test_filterwise_orthogonalization_keeps_filter_norms():
    params = _params()
    g = torch.Generator().manual_seed(5)
    d1 = filter_normalized_direction(params, g)
    d2 = filter_normalized_direction(params, g)
    o = orthogonalize_filterwise(d2, d1)
    dot = sum(float((o[n].double() * d1[n].double()).sum()) for n in params)
    scale = math.sqrt(sum(float(w.double().pow(2).sum()) for w in params.values()))
    assert abs(dot) < 1e-6 * scale**2
    before = sum(float((d2[n].double() * d1[n].double()).sum()) for n in params)
    assert abs(before) > 100 * abs(dot)  # it did have a component to remove
    for name, w in params.items():
        if w.dim() > 1:
            torch.testing.assert_close(
                o[name].reshape(w.shape[0], -1).norm(dim=1), w.reshape(w.shape[0], -1).norm(dim=1)
            )


def test_grid_is_symmetric_with_exact_centre():
    for steps, span in [(21, 1.0), (41, 0.3), (7, 1e-4), (3, 2.5)]:
        c = grid_coordinates(steps, span)
        assert c.dtype == torch.float64 and c.numel() == steps
        assert c[steps // 2] == 0.0
        assert torch.equal(c, -c.flip(0))
        assert c[0] == -span and c[-1] == span
        assert bool((c.diff() > 0).all())
    with pytest.raises(ValueError, match="odd"):
        grid_coordinates(20, 1.0)
    with pytest.raises(ValueError, match="span"):
        grid_coordinates(5, 0.0)


def test_grid_points_are_alpha_major_and_aligned():
    a, b = grid_coordinates(3, 1.0), grid_coordinates(5, 2.0)
    points = grid_points(a, b)
    assert points.shape == (15, 2)
    for i in range(3):
        for j in range(5):
            assert points[i * 5 + j].tolist() == [a[i].item(), b[j].item()]
    assert grid_points(a).shape == (3, 1)


def test_central_differences_exact_on_a_quadratic():
    t = grid_coordinates(9, 0.8)
    f = 1.5 - 0.7 * t + 2.25 * t**2
    slope, curvature = central_differences(f, t)
    assert slope == pytest.approx(-0.7, rel=1e-12)
    assert curvature == pytest.approx(4.5, rel=1e-12)


def test_total_variation_closed_forms():
    span = 0.1
    t = grid_coordinates(11, span)
    assert total_variation(3.0 * t**2, t) == pytest.approx(1 / span)  # minimum of a quadratic
    assert total_variation(2.0 - 5.0 * t, t) == pytest.approx(1 / (2 * span))  # linear
    assert math.isnan(total_variation(torch.ones(11), t))  # flat: undefined
    assert math.isnan(total_variation(torch.tensor([1.0, math.inf, 2.0]), t[:3]))


def test_roughness_index_zero_on_smooth_and_grows_with_ripples():
    g = torch.Generator().manual_seed(0)
    span = 1.0
    t = grid_coordinates(11, span)
    curvatures = torch.rand(20, generator=g, dtype=torch.float64) + 0.5
    quadratic = [total_variation(c * t**2, t) for c in curvatures]
    assert roughness_index(quadratic) == pytest.approx(0.0, abs=1e-12)
    slopes = torch.randn(20, generator=g, dtype=torch.float64)
    assert roughness_index([total_variation(s * t, t) for s in slopes]) == pytest.approx(
        0.0, abs=1e-12
    )
    phases = torch.rand(20, generator=g, dtype=torch.float64) * 6.28
    ri = []
    for eps in (0.05, 0.2, 0.5):
        lines = [c * t**2 + eps * torch.sin(7 * t + p) for c, p in zip(curvatures, phases)]
        ri.append(roughness_index([total_variation(f, t) for f in lines]))
    assert 0 < ri[0] < ri[1] < ri[2]
    assert math.isnan(roughness_index([1.0]))
