"""Fused norms against per-tensor float64 references."""

from __future__ import annotations

import pytest
import torch

from gradlens.functional.norms import NormPlan, measurable, nonfinite_counts, tensor_norms


def test_norms_match_float64_reference_across_dtypes():
    g = torch.Generator().manual_seed(0)
    tensors = [
        torch.randn(7, 5, generator=g),
        torch.randn(3, generator=g).double(),
        torch.randn(4, 4, generator=g).bfloat16(),
        torch.randn(2, 3, 4, generator=g).half(),
        torch.arange(6),
    ]
    expected = torch.stack([t.double().norm() for t in tensors]).float()
    got = tensor_norms(tensors)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)


def test_half_precision_norm_does_not_overflow():
    big = torch.full((10_000,), 1000.0, dtype=torch.float16)  # sum of squares ≫ fp16 max
    assert tensor_norms([big]).item() == pytest.approx(1000.0 * 100.0, rel=1e-3)


def test_nonfinite_counts_exact():
    a = torch.tensor([1.0, float("nan"), float("inf"), -float("inf"), 0.0])
    b = torch.ones(3, 3)
    c = torch.tensor([float("nan")] * 4, dtype=torch.bfloat16)
    assert nonfinite_counts([a, b, c]).tolist() == [3.0, 0.0, 4.0]


def test_empty():
    assert tensor_norms([]).numel() == 0
    assert nonfinite_counts([]).numel() == 0


def test_nonfinite_count_beyond_low_precision_integer_range():
    t = torch.full((5000,), float("inf"), dtype=torch.bfloat16)
    assert nonfinite_counts([t]).item() == 5000.0


def _dense_oracle(t: torch.Tensor) -> torch.Tensor:
    dense = (t.to_dense() if t.layout != torch.strided else t).resolve_conj()
    return torch.view_as_real(dense).double() if dense.is_complex() else dense.double()


def _unusual_tensors() -> list[torch.Tensor]:
    """A sparse embedding gradient with repeated rows (uncoalesced, as backward leaves it), a
    CSR matrix, complex tensors of both widths, and a plain one."""
    g = torch.Generator().manual_seed(1)
    rows = torch.tensor([[3, 0, 3, 7, 3]])  # row 3 three times: its entries add up
    coo = torch.sparse_coo_tensor(rows, torch.randn(5, 4, generator=g), (10, 4))
    assert not coo.is_coalesced()
    csr = torch.randn(5, 6, generator=g).relu().to_sparse_csr()
    return [
        coo,
        csr,
        torch.randn(3, 4, dtype=torch.cfloat, generator=g),
        torch.randn(6, dtype=torch.cdouble, generator=g).conj(),  # a lazy conjugate view
        torch.randn(2, 2, generator=g),
    ]


def test_sparse_and_complex_norms_equal_their_dense_real_oracles():
    tensors = _unusual_tensors()
    expected = torch.stack([_dense_oracle(t).norm() for t in tensors]).float()
    torch.testing.assert_close(tensor_norms(tensors), expected, rtol=1e-6, atol=0)
    # The planned path meets sparse gradients only at call time (its template is the dense
    # parameters): it switches to the general path once, with the same values.
    plan = NormPlan([torch.zeros(10, 4), torch.zeros(2, 2)])
    assert plan.simple
    got = plan([tensors[0], tensors[4]])
    torch.testing.assert_close(got, expected[[0, 4]], rtol=1e-6, atol=0)
    assert not plan.simple
    assert measurable(tensors[2]).dtype == torch.float32  # complex64 → its float32 real view


def test_nonfinite_counts_of_sparse_and_complex_tensors():
    nan, inf = float("nan"), float("inf")
    coo = torch.sparse_coo_tensor(torch.tensor([[1, 4, 1]]), torch.tensor([nan, 2.0, 1.0]), (6,))
    z = torch.tensor([complex(1, nan), complex(inf, inf), complex(0, 1)], dtype=torch.cfloat)
    # row 1 is nan + 1 = nan once coalesced; a complex entry counts its real and imaginary parts
    assert nonfinite_counts([coo, z]).tolist() == [1.0, 3.0]
