"""Fused norms against per-tensor float64 references."""

from __future__ import annotations

import pytest
import torch

from gradlens.functional.norms import nonfinite_counts, tensor_norms


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
