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


# -- bounded basis: thick restart with locking -----------------------------------------------


def _clustered_matrix(n=300, seed=0):
    """Five clustered top eigenvalues (gaps 1e-3..1e-2) over a dense bulk reaching 0.9."""
    bulk = torch.linspace(-0.2, 0.9, n - 5, dtype=torch.float64).tolist()
    return _spectrum_matrix([1.0, 0.999, 0.998, 0.99, 0.98, *bulk], seed)


def _ordered(h, which, k):
    ev = torch.linalg.eigvalsh(h)
    return {"LA": ev.flip(0), "SA": ev, "LM": ev[ev.abs().argsort(descending=True)]}[which][:k]


class _LargestTensor(torch.utils._python_dispatch.TorchDispatchMode):
    """The most elements any op produced: bounds what the basis can have allocated."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("matrix", ["outlier", "clustered"])
@pytest.mark.parametrize("which,k", [("LA", 5), ("SA", 3), ("LM", 5), ("LA", 1)])
def test_restarted_lanczos_matches_dense_eigvalsh_with_basis_capped_at_2k_plus_10(matrix, which, k):
    h = _outlier_matrix() if matrix == "outlier" else _clustered_matrix()
    cap = 2 * k + 10
    res = lanczos(
        lambda v: h @ v,
        h.shape[0],
        k,
        which,
        tol=1e-7,
        dtype=torch.float64,
        max_basis=cap,
        max_iter=1000,
        generator=torch.Generator().manual_seed(1),
    )
    assert res.converged and res.basis_vectors <= cap
    torch.testing.assert_close(res.eigenvalues, _ordered(h, which, k), rtol=1e-8, atol=1e-12)
    for value, residual, vector in zip(res.eigenvalues, res.residuals, res.eigenvectors):
        true = float(torch.linalg.vector_norm(h @ vector - value * vector))
        assert true <= 1e-7 * abs(float(value)) + 1e-12
        assert abs(true - float(residual)) <= 1e-9  # reported residuals stay true residuals


def test_clustered_spectrum_needs_restarts_and_locks_pairs():
    h = _clustered_matrix()
    res = lanczos(
        lambda v: h @ v,
        300,
        5,
        "SA",
        tol=1e-7,
        dtype=torch.float64,
        max_basis=20,
        max_iter=1000,
        generator=torch.Generator().manual_seed(1),
    )
    assert res.converged and res.restarts >= 3 and res.locked >= 1
    torch.testing.assert_close(res.eigenvalues, _ordered(h, "SA", 5), rtol=1e-8, atol=1e-12)
    # the other end stays in the basis: λmax is estimated by the same run
    assert abs(float(res.ritz[-1]) - 1.0) < 1e-2


def test_memory_cap_respected_counting_basis_vectors():
    h = _clustered_matrix()
    n, k, cap = h.shape[0], 5, 20
    counter = _LargestTensor()
    with counter:
        res = lanczos(
            lambda v: h @ v,
            n,
            k,
            "SA",
            tol=1e-6,
            dtype=torch.float64,
            max_basis=cap,
            max_iter=1000,
            generator=torch.Generator().manual_seed(1),
        )
    assert res.restarts >= 1 and res.hvps > cap
    assert res.basis_vectors == cap
    # no tensor larger than the capped basis (cap vectors of length n) was ever created
    assert counter.largest <= cap * n
    unbounded = _LargestTensor()
    with unbounded:
        full = lanczos(
            lambda v: h @ v,
            n,
            k,
            "SA",
            tol=1e-6,
            dtype=torch.float64,
            max_iter=1000,
            generator=torch.Generator().manual_seed(1),
        )
    assert unbounded.largest > cap * n and full.basis_vectors > cap  # the count can fail


def test_float32_restarted_basis_reaches_requested_tolerance():
    h = _outlier_matrix()
    h32 = h.float()
    res = lanczos(
        lambda v: h32 @ v,
        300,
        5,
        "LA",
        tol=1e-3,
        max_basis=20,
        generator=torch.Generator().manual_seed(2),
    )
    exact = torch.tensor([10.0, 7.0, 5.0, 4.0, 3.0], dtype=torch.float64)
    assert ((res.eigenvalues - exact).abs() / exact).max() < 1e-3
    for value, vector in zip(res.eigenvalues, res.eigenvectors.double()):
        assert torch.linalg.vector_norm(h @ vector - value * vector) <= 1.1e-3 * abs(value)


@pytest.mark.parametrize("max_basis", [None, 20])
def test_pipelined_convergence_check_costs_at_most_one_product(max_basis):
    h = _clustered_matrix()
    runs = [
        lanczos(
            lambda v: h @ v,
            300,
            5,
            "LA",
            tol=1e-6,
            dtype=torch.float64,
            max_basis=max_basis,
            generator=torch.Generator().manual_seed(3),
            pipeline=lag,
        )
        for lag in (False, True)
    ]
    assert runs[0].converged and runs[1].converged
    assert runs[0].hvps <= runs[1].hvps <= runs[0].hvps + 1
    torch.testing.assert_close(runs[1].eigenvalues, _ordered(h, "LA", 5), rtol=1e-6, atol=0)


def test_max_basis_too_small_for_k_is_rejected():
    with pytest.raises(ValueError, match="max_basis"):
        lanczos(lambda v: v, 100, 5, max_basis=8)


# -- trace reusing an eigen run ----------------------------------------------------------------


def test_deflated_hutchpp_is_unbiased_and_tighter_than_plain_hutchpp():
    h = _outlier_matrix()
    exact = float(h.trace())
    eig = lanczos(
        lambda v: h @ v,
        300,
        5,
        tol=1e-6,
        dtype=torch.float64,
        generator=torch.Generator().manual_seed(0),
    )
    common = dict(sketch=4, tol=1e-4, max_hvps=60, dtype=torch.float64)
    plain = hutchpp(lambda v: h @ v, 300, generator=torch.Generator().manual_seed(4), **common)
    deflated = hutchpp(
        lambda v: h @ v,
        300,
        generator=torch.Generator().manual_seed(4),
        known=(eig.eigenvectors, eig.eigenvalues),
        **common,
    )
    assert deflated.deflated == 5 and deflated.method == "deflated hutch++"
    assert abs(deflated.estimate - exact) <= 3 * deflated.stderr
    assert deflated.stderr < plain.stderr
    assert deflated.hvps <= 60


def test_trace_says_when_the_budget_cannot_reach_the_requested_stderr():
    h = _outlier_matrix()
    tight = hutchpp(
        lambda v: h @ v,
        300,
        sketch=2,
        tol=1e-6,
        max_hvps=12,
        dtype=torch.float64,
        generator=torch.Generator().manual_seed(0),
    )
    assert not tight.reached and tight.hvps == 12
    easy = hutchinson(
        lambda v: torch.diag(torch.linspace(1, 2, 300, dtype=torch.float64)) @ v,
        300,
        tol=1e-2,
        dtype=torch.float64,
    )
    assert easy.reached


def test_pipelined_run_honours_min_iter_for_quadrature():
    h = _outlier_matrix(120)
    res = lanczos(
        lambda v: h @ v,
        120,
        1,
        tol=1e-3,
        min_iter=30,
        max_iter=30,
        dtype=torch.float64,
        pipeline=True,
        generator=torch.Generator().manual_seed(0),
    )
    assert res.hvps == 30 and res.steps == 30 and res.restarts == 0
    _, weights = quadrature(res)
    assert float(weights.sum()) == pytest.approx(1.0)


@pytest.mark.parametrize("max_basis", [None, 16])
def test_sharded_vectors_keep_their_local_length(max_basis):
    """Two identical 'ranks' (allreduce doubles partial sums): the operator is diag(H, H)
    on global vectors [x; x], of dimension 2n, while each process holds n entries."""
    h = _outlier_matrix(150)
    start = torch.randn(150, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    res = lanczos(
        lambda v: h @ v,
        300,
        3,
        tol=1e-8,
        start=start,
        dtype=torch.float64,
        max_basis=max_basis,
        max_iter=500,
        allreduce=lambda t: 2 * t,
    )
    assert res.eigenvectors.shape == (3, 150) and res.converged
    torch.testing.assert_close(res.eigenvalues, _ordered(h, "LA", 3), rtol=1e-8, atol=1e-12)
