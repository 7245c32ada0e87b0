"""Lanczos, Hutchinson/Hutch++ and SLQ against explicit matrices."""

from __future__ import annotations

import math

import pytest
import torch

from gradlens.functional.lanczos import lanczos
from gradlens.functional.slq import gaussian_density, quadrature
from gradlens.functional.trace import hutchinson, hutchpp


def _spectrum_matrix(eigs, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigs), len(eigs), generator=g, dtype=torch.float64))
    return q @ torch.diag(torch.tensor(eigs, dtype=torch.float64)) @ q.T


def _outlier_matrix(n=300, seed=0):
    """Hessian-like: a bulk near zero (both signs) and a few outliers."""
    g = torch.Generator().manual_seed(seed)
    bulk = (torch.rand(n - 6, generator=g, dtype=torch.float64) - 0.3) * 0.2
    return _spectrum_matrix([10.0, 7.0, 5.0, 4.0, 3.0, -1.5, *bulk.tolist()], seed)


@pytest.mark.parametrize(
    "which,expected",
    [
        ("LA", [10.0, 7.0, 5.0]),
        ("SA", [-1.5]),
        ("LM", [10.0, 7.0]),
    ],
)
def test_wanted_eigenvalues_and_true_residuals(which, expected):
    h = _outlier_matrix()
    k = len(expected)
    res = lanczos(
        lambda v: h @ v,
        h.shape[0],
        k,
        which,
        tol=1e-6,
        dtype=torch.float64,
        generator=torch.Generator().manual_seed(1),
    )
    assert res.converged
    torch.testing.assert_close(
        res.eigenvalues, torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=0
    )
    for value, residual, vector in zip(res.eigenvalues, res.residuals, res.eigenvectors):
        true = torch.linalg.vector_norm(h @ vector - value * vector)
        assert true <= 1e-6 * abs(value) + 1e-12
        assert abs(true - residual) <= 1e-9  # the Ritz residual is the true residual
    assert res.hvps < 60


def test_float32_basis_reaches_requested_tolerance():
    h = _outlier_matrix()
    h32 = h.float()
    res = lanczos(
        lambda v: h32 @ v, h.shape[0], 5, "LA", tol=1e-3, generator=torch.Generator().manual_seed(2)
    )
    exact = torch.tensor([10.0, 7.0, 5.0, 4.0, 3.0])
    assert ((res.eigenvalues.float() - exact).abs() / exact).max() < 1e-3
    for value, vector in zip(res.eigenvalues, res.eigenvectors.double()):
        assert torch.linalg.vector_norm(h @ vector - value * vector) <= 1.1e-3 * abs(value)


def test_offloaded_basis_gives_the_same_answer():
    h = _outlier_matrix()
    a = lanczos(
        lambda v: h @ v, 300, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    b = lanczos(
        lambda v: h @ v,
        300,
        2,
        dtype=torch.float64,
        basis_device="cpu",
        generator=torch.Generator().manual_seed(0),
    )
    torch.testing.assert_close(a.eigenvalues, b.eigenvalues)


def test_invariant_subspace_breakdown_is_exact():
    h = torch.zeros(50, 50, dtype=torch.float64)
    h[0, 0], h[1, 1] = 3.0, 2.0  # rank 2: Krylov space exhausted after 2-3 steps
    res = lanczos(lambda v: h @ v, 50, 2, dtype=torch.float64, tol=1e-12)
    assert res.converged and res.hvps <= 3
    torch.testing.assert_close(res.eigenvalues, torch.tensor([3.0, 2.0], dtype=torch.float64))


def test_argument_checks():
    with pytest.raises(ValueError, match="which"):
        lanczos(lambda v: v, 10, 1, "XX")
    with pytest.raises(ValueError, match="k must be"):
        lanczos(lambda v: v, 10, 11)


def test_hutchinson_and_hutchpp_within_three_standard_errors():
    h = _outlier_matrix()
    exact = float(h.trace())
    for estimator in (hutchinson, hutchpp):
        res = estimator(
            lambda v: h @ v,
            300,
            tol=1e-3,
            max_hvps=120,
            dtype=torch.float64,
            generator=torch.Generator().manual_seed(3),
        )
        assert abs(res.estimate - exact) <= 3 * res.stderr, (estimator.__name__, res)
        assert res.hvps <= 120 and res.stderr > 0


def test_hutchpp_is_exact_on_low_rank():
    h = _spectrum_matrix([5.0, 3.0, 1.0] + [0.0] * 97)
    res = hutchpp(
        lambda v: h @ v,
        100,
        sketch=5,
        max_hvps=30,
        dtype=torch.float64,
        generator=torch.Generator().manual_seed(0),
    )
    assert res.estimate == pytest.approx(9.0, abs=1e-9) and res.stderr < 1e-9


def test_hutchinson_stops_on_its_standard_error():
    h = torch.diag(torch.linspace(1, 2, 200, dtype=torch.float64))  # zero variance: diagonal
    res = hutchinson(
        lambda v: h @ v, 200, tol=1e-2, min_samples=10, max_hvps=100, dtype=torch.float64
    )
    assert res.hvps == 12 and res.estimate == pytest.approx(300.0)  # 3 blocks of 4


def test_slq_density_integrates_to_one_with_first_moment_of_the_start_vectors():
    h = _outlier_matrix(200)
    runs = [
        lanczos(
            lambda v: h @ v,
            200,
            1,
            tol=1e-14,
            max_iter=30,
            min_iter=30,
            dtype=torch.float64,
            generator=torch.Generator().manual_seed(s),
        )
        for s in range(3)
    ]
    density = gaussian_density(runs, points=4000)
    dx = float(density.grid[1] - density.grid[0])
    assert float(density.density.sum()) * dx == pytest.approx(1.0, abs=1e-6)
    # Gauss quadrature reproduces qᵀHq exactly for each run's start vector q
    exact = sum(float(r.start @ h @ r.start) for r in runs) / 3
    assert density.first_moment == pytest.approx(exact, rel=1e-10)
    curve = float((density.density * density.grid).sum()) * dx
    assert curve == pytest.approx(exact, rel=1e-6)
    nodes, weights = quadrature(runs[0])
    assert float(weights.sum()) == pytest.approx(1.0) and nodes.max() <= 10.0 + 1e-9
    # the outliers are resolved as nodes
    assert any(math.isclose(float(x), 10.0, rel_tol=1e-6) for x in nodes)
