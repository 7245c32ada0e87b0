"""Operators: the one-method base, the dense twin, diagonal blocks and plain callables."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from gradlens.functional.lanczos import lanczos
from gradlens.functional.operator import (
    BaseOperator,
    DenseOperator,
    Operator,
    as_operator,
    restrict,
)


def _spd(n: int = 7, seed: int = 0) -> Tensor:
    a = torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return a @ a.T + torch.eye(n, dtype=torch.float64)


class _Tridiagonal(BaseOperator):
    """2 on the diagonal, -1 off it: only ``_matvec`` is written."""

    def __init__(self, n: int) -> None:
        self.dim, self.dtype, self.device = n, torch.float64, torch.device("cpu")

    def _matvec(self, v: Tensor) -> Tensor:
        out = 2 * v
        out[1:] -= v[:-1]
        out[:-1] -= v[1:]
        return out


def _tridiagonal_matrix(n: int) -> Tensor:
    return (
        2 * torch.eye(n, dtype=torch.float64)
        - torch.diag(torch.ones(n - 1, dtype=torch.float64), 1)
        - torch.diag(torch.ones(n - 1, dtype=torch.float64), -1)
    )


def test_base_operator_needs_only_a_matvec():
    op = _Tridiagonal(6)
    assert isinstance(op, Operator)
    dense = _tridiagonal_matrix(6)
    v = torch.randn(3, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(op(v[0]), dense @ v[0])
    torch.testing.assert_close(op.matmat(v), v @ dense.T)  # rows, one product each
    with pytest.raises(TypeError):
        BaseOperator()  # type: ignore[abstract]


def test_dense_operator_counts_and_keeps_the_vector_dtype():
    h = _spd()
    op = DenseOperator(h)
    v = torch.randn(7, generator=torch.Generator().manual_seed(2))
    assert op(v).dtype == torch.float32
    torch.testing.assert_close(op(v.double()), h @ v.double())
    op.matmat(torch.ones(4, 7, dtype=torch.float64))
    assert op.count == 6
    with pytest.raises(ValueError, match="square"):
        DenseOperator(torch.ones(2, 3))


def test_restrict_is_the_diagonal_block_of_its_dense_twin():
    h = _spd(9, seed=3)
    index = torch.tensor([1, 4, 5, 8])
    block = restrict(DenseOperator(h), index)
    assert block.dim == 4 and isinstance(block, BaseOperator)
    v = torch.randn(2, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    sub = h[index][:, index]
    torch.testing.assert_close(block(v[0]), sub @ v[0])
    torch.testing.assert_close(block.matmat(v), v @ sub.T)
    top = lanczos(block, k=1, tol=1e-10).eigenvalues[0]
    assert float(top) == pytest.approx(float(torch.linalg.eigvalsh(sub)[-1]), rel=1e-9)
    tri = restrict(_Tridiagonal(5), torch.tensor([0, 2, 4]))  # no coupling left: 2·I
    torch.testing.assert_close(tri(torch.ones(3, dtype=torch.float64)), 2 * torch.ones(3).double())
    for bad in (torch.tensor([], dtype=torch.long), torch.tensor([0, 9]), torch.zeros(2, 2)):
        with pytest.raises(ValueError):
            restrict(DenseOperator(h), bad.long())


def test_as_operator_wraps_a_plain_matvec():
    h = _spd(5, seed=5)
    op = as_operator(lambda v: h @ v, 5, torch.float64)
    assert (op.dim, op.dtype, op.device.type) == (5, torch.float64, "cpu")
    torch.testing.assert_close(op.matmat(torch.eye(5, dtype=torch.float64)), h)
    dense = DenseOperator(h)
    assert as_operator(dense) is dense  # already an operator with the same dim, dtype, device
    with pytest.raises(ValueError, match="dim"):
        as_operator(lambda v: v)
