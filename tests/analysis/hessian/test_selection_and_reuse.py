"""HVP engine choice (timed, finite differences only after an accuracy check), the bounded
Lanczos basis through the API, and the trace reusing an eigen run — against dense float64."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import gradlens.analysis.hessian as gh
import gradlens.analysis.hessian.choose as choose
import gradlens.analysis.hessian.spectra as spectra
from gradlens.analysis.hessian import DoubleBackwardHVP, FiniteDifferenceHVP, choose_hvp
from gradlens.analysis.objective import Objective, batches_from_data
from gradlens.functional.operator import DenseOperator, restrict
from tests.analysis.hessian.test_dense_twins import _data, _dense, _mlp


@pytest.fixture
def fast_finite_differences(monkeypatch):
    """Finite differences report themselves as the fastest engine, whatever the clock says."""
    timed = choose._timed

    def fake(engine):
        seconds, out = timed(engine)
        return (1e-9 if isinstance(engine, FiniteDifferenceHVP) else seconds), out

    monkeypatch.setattr(choose, "_timed", fake)


def _objective(dtype=torch.float64):
    model, (x, y) = _mlp().to(dtype), _data()
    return Objective(model, batches_from_data((x.to(dtype), y), F.cross_entropy))


def test_finite_differences_chosen_when_fastest_and_accurate(fast_finite_differences):
    obj = _objective()
    with obj.isolated():
        engine = choose_hvp(obj, "auto")
    assert engine.method == "finite_difference"
    check = engine.selection["fd_check"]
    assert check["passed"] and check["error"] <= 1e-3
    assert set(engine.selection["seconds"]) == {
        "double_backward",
        "forward_over_reverse",
        "finite_difference",
    }


def test_finite_differences_rejected_when_their_check_fails(fast_finite_differences):
    obj = _objective()
    messages = []
    with obj.isolated():  # a huge step: fastest, but wrong by far more than 1e-3
        engine = choose_hvp(obj, "auto", fd_eps=3.0, log=messages.append)
    assert engine.method in ("double_backward", "forward_over_reverse")
    check = engine.selection["fd_check"]
    assert not check["passed"] and check["error"] > 1e-3
    assert any("fail the accuracy check" in m for m in messages)
    # the stored error is the real one: recompute it against the dense Hessian
    model, (x, y) = _mlp(), _data()
    h = _dense(model, F.cross_entropy, [(x, y)])
    v = torch.randn(h.shape[0], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with obj.isolated():
        fd = FiniteDifferenceHVP(obj, fd_eps=3.0)(v)
    exact = h @ v
    assert check["error"] == pytest.approx(float((fd - exact).norm() / exact.norm()), rel=1e-6)


def test_probe_rows_carry_the_engine_choice_and_check(fast_finite_differences):
    from gradlens.probes.hessian import _Rows, _selection_rows

    obj = _objective()
    with obj.isolated():
        engine = choose_hvp(obj, "auto", fd_eps=3.0, log=lambda m: None)
    rows = _Rows(7)
    _selection_rows(rows, engine.selection)
    table = list(zip(rows.columns["metric"], rows.columns["layer"], rows.columns["value"]))
    assert ("hvp_engine", engine.method, 1.0) in table
    assert ("fd_check_passed", "", 0.0) in table
    assert {m for m, _, _ in table} >= {"hvp_seconds", "fd_check_error"}


def test_api_plans_a_bounded_basis_when_the_full_one_is_too_big(monkeypatch):
    monkeypatch.setattr(spectra, "FULL_BASIS_LIMIT", 1)  # any full basis is "too big"
    model, (x, y) = _mlp(), _data()
    k = 3
    res = gh.hessian_eigenvalues(
        model, F.cross_entropy, (x, y), k=k, tol=1e-7, dtype=torch.float64, max_iter=2000
    )
    assert res.basis.startswith("restarted") and res.run.basis_vectors <= max(2 * k + 10, 24)
    ev = torch.linalg.eigvalsh(_dense(model, F.cross_entropy, [(x, y)])).flip(0)[:k]
    torch.testing.assert_close(res.eigenvalues, ev, rtol=1e-7, atol=1e-10)


def test_explicit_max_basis_through_the_api():
    model, (x, y) = _mlp(), _data()
    res = gh.hessian_eigenvalues(
        model,
        F.cross_entropy,
        (x, y),
        k=2,
        tol=1e-8,
        dtype=torch.float64,
        max_basis=14,
        max_iter=2000,
    )
    assert res.run.basis_vectors <= 14
    ev = torch.linalg.eigvalsh(_dense(model, F.cross_entropy, [(x, y)])).flip(0)[:2]
    torch.testing.assert_close(res.eigenvalues, ev, rtol=1e-8, atol=1e-10)


def test_trace_reusing_the_eigen_run_within_three_standard_errors():
    model, (x, y) = _mlp(), _data()
    exact = float(_dense(model, F.cross_entropy, [(x, y)]).trace())
    eig = gh.hessian_eigenvalues(model, F.cross_entropy, (x, y), k=5, tol=1e-4)
    res = gh.hessian_trace(
        model, F.cross_entropy, (x, y), tol=1e-3, max_hvps=80, sketch=5, eigen=eig, seed=2
    )
    assert res.deflated == 5 and res.hvps <= 80
    assert abs(res.estimate - exact) <= 3 * res.stderr + 1e-6 * abs(exact)
    assert res.reached == (res.stderr <= 1e-3 * abs(res.estimate))


def test_dense_operator_and_restrict_match_the_matrix():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(9, 9, generator=g, dtype=torch.float64)
    h = a + a.T
    op = DenseOperator(h)
    index = torch.tensor([1, 4, 5, 8])
    block = restrict(op, index)
    v = torch.randn(3, 4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(block(v[0]), h[index][:, index] @ v[0])
    torch.testing.assert_close(block.matmat(v), v @ h[index][:, index].T)
    from gradlens.functional.lanczos import lanczos

    res = lanczos(block, k=1, tol=1e-10)  # the operator carries dim, dtype and device
    assert res.eigenvalues[0] == pytest.approx(
        float(torch.linalg.eigvalsh(h[index][:, index])[-1]), rel=1e-9
    )
    with pytest.raises(ValueError, match="out of range"):
        restrict(op, torch.tensor([9]))
    assert math.isfinite(float(res.residuals[0]))


def test_hvp_engine_is_an_operator_against_its_dense_twin():
    from gradlens.functional.operator import Operator

    obj = _objective()
    model, (x, y) = _mlp(), _data()
    h = _dense(model, F.cross_entropy, [(x, y)])
    with obj.isolated():
        engine = DoubleBackwardHVP(obj)
        assert isinstance(engine, Operator)
        v = torch.randn(
            2, engine.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64
        )
        torch.testing.assert_close(
            engine.matmat(v), DenseOperator(h).matmat(v), rtol=1e-9, atol=1e-12
        )


def test_basis_offloaded_only_as_the_last_resort_and_said(monkeypatch, capsys):
    model, (x, y) = _mlp(), _data()
    obj = Objective(model, batches_from_data((x, y), F.cross_entropy))
    with obj.isolated():
        engine = DoubleBackwardHVP(obj)
        vector = engine.dim * 8
        plans = {}
        for label, free in (("roomy", 10**12), ("tight", 100 * vector), ("full", 10 * vector)):
            monkeypatch.setattr(spectra, "_available_after_product", lambda e, d, free=free: free)
            plans[label] = spectra._basis_plan(engine, 3, None, torch.float64, None)
    assert plans["roomy"][1] is None and plans["roomy"][2].startswith("full")
    assert plans["tight"][1] == 24 and plans["tight"][2] == "restarted (24 vectors) on cpu"
    device, max_basis, text = plans["full"]
    assert max_basis == 24 and "offloaded" in text and device.type == "cpu"
    assert "does not fit next to the model" in capsys.readouterr().err
