"""The HVP engines as operators: each against its dense float64 twin (products, batched
products, diagonal blocks through ``restrict``), the parameter layout, and ``choose_hvp``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gradlens.analysis.hessian import (
    DoubleBackwardHVP,
    FiniteDifferenceHVP,
    ForwardOverReverseHVP,
    HessianOperator,
    choose_hvp,
    top_eigenpairs,
)
from gradlens.analysis.objective import Objective, batches_from_data
from gradlens.functional.operator import BaseOperator, DenseOperator, Operator, restrict
from tests.analysis.hessian.test_dense_twins import _data, _dense, _mlp

ENGINES = [DoubleBackwardHVP, ForwardOverReverseHVP, FiniteDifferenceHVP]


@pytest.fixture(scope="module")
def case():
    model, (x, y) = _mlp(), _data()
    split = list(zip(x.tensor_split(3), y.tensor_split(3)))  # several batches: weighted sum
    objective = Objective(model, batches_from_data(split, F.cross_entropy))
    return objective, _dense(model, F.cross_entropy, split)


def _tol(engine: HessianOperator) -> float:
    return 1e-5 if isinstance(engine, FiniteDifferenceHVP) else 1e-10


@pytest.mark.parametrize("kind", ENGINES, ids=lambda k: k.method)
def test_engine_products_match_the_dense_twin(case, kind):
    objective, h = case
    dense = DenseOperator(h)
    vectors = torch.randn(3, h.shape[0], generator=torch.Generator().manual_seed(2), dtype=h.dtype)
    with objective.isolated():
        engine = kind(objective)
        assert isinstance(engine, BaseOperator) and isinstance(engine, Operator)
        assert (engine.dim, engine.dtype, engine.method) == (h.shape[0], h.dtype, kind.method)
        tol = _tol(engine)
        scale = tol * float(h.abs().max())
        torch.testing.assert_close(engine(vectors[0]), dense(vectors[0]), rtol=tol, atol=scale)
        torch.testing.assert_close(
            engine.matmat(vectors), dense.matmat(vectors), rtol=tol, atol=scale
        )
        assert engine.count == 4 and engine.setup_count == 0
        before = engine.count
        engine.product(vectors[1])  # uncounted: engine choice and memory planning
        assert engine.count == before
        # a float32 vector comes back float32 (computed in the parameters' float64)
        assert engine(vectors[0].float()).dtype == torch.float32


@pytest.mark.parametrize("kind", ENGINES, ids=lambda k: k.method)
def test_restricted_engine_is_the_dense_block(case, kind):
    objective, h = case
    with objective.isolated():
        engine = kind(objective)
        blocks = engine.module_blocks()
        assert list(blocks) == ["0", "2"]  # Linear(6, 12) and Linear(12, 4)
        assert [int(i.numel()) for i in blocks.values()] == [6 * 12 + 12, 12 * 4 + 4]
        index = blocks["2"]
        block = restrict(engine, index)
        v = torch.randn(block.dim, generator=torch.Generator().manual_seed(3), dtype=h.dtype)
        twin = restrict(DenseOperator(h), index)
        tol = _tol(engine)
        torch.testing.assert_close(block(v), twin(v), rtol=tol, atol=tol * float(h.abs().max()))
        torch.testing.assert_close(block(v), h[index][:, index] @ v, rtol=tol, atol=tol)


def test_unflatten_is_the_parameter_layout(case):
    objective, h = case
    with objective.isolated():
        engine = DoubleBackwardHVP(objective)
        flat = torch.arange(engine.dim, dtype=torch.float64)
        parts = engine.unflatten(flat)
        assert list(parts) == objective.names
        for p, (name, part) in zip(objective.params, parts.items(), strict=True):
            assert part.shape == p.shape, name
        assert torch.equal(torch.cat([t.reshape(-1) for t in parts.values()]), flat)
        res = top_eigenpairs(engine, k=2, tol=1e-8, dtype=torch.float64)
    ev, vecs = torch.linalg.eigh(h)
    torch.testing.assert_close(res.eigenvalues, ev.flip(0)[:2], rtol=1e-8, atol=1e-10)
    top = torch.cat([t.reshape(-1) for t in res.eigenvectors[0].values()])
    assert abs(float(top @ vecs[:, -1])) == pytest.approx(1.0, abs=1e-6)


def test_choose_hvp_explicit_methods_and_errors(case):
    objective, _ = case
    with objective.isolated():
        for kind in ENGINES:
            engine = choose_hvp(objective, kind.method)
            assert type(engine) is kind and engine.setup_count == 0
        assert choose_hvp(objective, "finite_difference", fd_eps=0.25).fd_eps == 0.25
        auto = choose_hvp(objective)
        assert auto.method == auto.selection["method"] and auto.count == 0
        assert auto.setup_count == 9  # three engines × (a warm-up + two timed products)
        assert set(auto.selection["seconds"]) == {k.method for k in ENGINES}
    with pytest.raises(ValueError, match="method must be one of"):
        choose_hvp(objective, "newton")
    frozen = _mlp().requires_grad_(False)
    empty = Objective(frozen, batches_from_data(_data(), F.cross_entropy))
    with pytest.raises(ValueError, match="no trainable parameters"):
        choose_hvp(empty)
