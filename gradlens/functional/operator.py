"""Symmetric linear operators on flat vectors: what the Hessian algorithms take.

An operator has ``dim``, ``dtype``, ``device``, ``__call__(v) -> Av`` and
``matmat(V) -> (A vᵢ)ᵢ`` for the rows of ``V`` (m, dim). :class:`BaseOperator` is the base
whose subclasses implement one method, ``_matvec`` (the HVP engines of
``gradlens.analysis.hessian`` are such subclasses); :class:`DenseOperator` is the test twin;
:func:`restrict` gives a diagonal block (e.g. one layer's Hessian). Modelled on curvlinops'
``PyTorchLinearOperator``.

Example:
    >>> op = DenseOperator(torch.diag(torch.arange(1.0, 4.0)))
    >>> restrict(op, torch.tensor([0, 2]))(torch.ones(2))
    tensor([1., 3.])
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = ["BaseOperator", "DenseOperator", "Operator", "as_operator", "restrict"]


@runtime_checkable
class Operator(Protocol):
    dim: int
    dtype: torch.dtype
    device: torch.device

    def __call__(self, v: Tensor) -> Tensor: ...

    def matmat(self, vectors: Tensor) -> Tensor: ...


class BaseOperator(ABC):
    """An :class:`Operator` from one method: subclasses set ``dim``, ``dtype`` and ``device``
    and implement ``_matvec``; ``matmat`` applies it row by row unless a subclass has a
    batched product."""

    dim: int
    dtype: torch.dtype
    device: torch.device

    def __call__(self, v: Tensor) -> Tensor:
        return self._matvec(v)

    def matmat(self, vectors: Tensor) -> Tensor:
        return torch.stack([self(v) for v in vectors])

    @abstractmethod
    def _matvec(self, v: Tensor) -> Tensor:
        """A v for one flat vector ``v`` (returned in ``v``'s dtype)."""


class _Wrapped:
    """A plain ``matvec`` callable with its dimension, dtype and device."""

    def __init__(
        self, matvec: Callable[[Tensor], Tensor], dim: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        self._matvec = matvec
        self.dim, self.dtype, self.device = dim, dtype, device
        inner = getattr(matvec, "matmat", None)
        self._matmat = inner if callable(inner) else None

    def __call__(self, v: Tensor) -> Tensor:
        return self._matvec(v)

    def matmat(self, vectors: Tensor) -> Tensor:
        if self._matmat is not None:
            return self._matmat(vectors)
        return torch.stack([self._matvec(v) for v in vectors])


def as_operator(
    matvec: Callable[[Tensor], Tensor] | Operator,
    dim: int | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Operator:
    """``matvec`` as an :class:`Operator`; arguments given override the operator's own."""
    size = dim if dim is not None else getattr(matvec, "dim", None)
    if size is None:
        raise ValueError("dim is needed for a plain matvec callable")
    kind = dtype or getattr(matvec, "dtype", None) or torch.float32
    where = torch.device(device or getattr(matvec, "device", None) or "cpu")
    if (
        isinstance(matvec, Operator)
        and int(size) == matvec.dim
        and kind == matvec.dtype
        and where == torch.device(matvec.device)
    ):
        return matvec
    return _Wrapped(matvec, int(size), kind, where)


class DenseOperator(BaseOperator):
    """An explicit symmetric matrix as an operator (the dense twin of an HVP engine).

    ``count`` is the number of products taken (a ``matmat`` of m rows counts m)."""

    def __init__(self, matrix: Tensor) -> None:
        if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"need a square matrix, got shape {tuple(matrix.shape)}")
        self.matrix = matrix
        self.dim = int(matrix.shape[0])
        self.dtype = matrix.dtype
        self.device = matrix.device
        self.count = 0

    def _matvec(self, v: Tensor) -> Tensor:
        self.count += 1
        return (self.matrix @ v.to(self.dtype)).to(v.dtype)

    def matmat(self, vectors: Tensor) -> Tensor:
        self.count += int(vectors.shape[0])
        return (vectors.to(self.dtype) @ self.matrix.T).to(vectors.dtype)


class _Restricted(BaseOperator):
    def __init__(self, op: Operator, index: Tensor) -> None:
        self.op = op
        self.index = index.to(op.device)
        self.dim = int(index.numel())
        self.dtype = op.dtype
        self.device = op.device

    def _embed(self, vectors: Tensor) -> Tensor:
        full = torch.zeros(
            *vectors.shape[:-1], self.op.dim, dtype=vectors.dtype, device=vectors.device
        )
        full[..., self.index] = vectors
        return full

    def _matvec(self, v: Tensor) -> Tensor:
        return self.op(self._embed(v))[self.index]

    def matmat(self, vectors: Tensor) -> Tensor:
        return self.op.matmat(self._embed(vectors))[:, self.index]


def restrict(op: Operator, index: Tensor) -> Operator:
    """The diagonal block A[index, index] of ``op``, as an operator of dimension len(index)."""
    if index.dim() != 1 or index.numel() == 0:
        raise ValueError("index must be a non-empty 1-D tensor of positions")
    if int(index.min()) < 0 or int(index.max()) >= op.dim:
        raise ValueError(f"index out of range for an operator of dimension {op.dim}")
    return _Restricted(op, index)
