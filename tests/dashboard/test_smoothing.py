"""The smoothing slider matches TensorBoard's debiased EMA."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gradlens.dashboard.smoothing import ema


def tensorboard_smooth(values, weight):
    """TensorBoard's loop (tensorboard/webapp/widgets/line_chart_v2/lib/data_transformer.ts)."""
    last, count, out = 0.0, 0, []
    for y in values:
        if not math.isfinite(y):
            out.append(y)
            continue
        last = last * weight + (1 - weight) * y
        count += 1
        out.append(last / (1 - weight**count))
    return out


@pytest.mark.parametrize("weight", [0.0, 0.3, 0.6, 0.95, 0.99])
def test_matches_tensorboard(weight):
    y = np.random.default_rng(2).standard_normal(500).cumsum()
    y[[10, 11, 300]] = [np.nan, np.inf, np.nan]
    expected = tensorboard_smooth(y.tolist(), weight)
    np.testing.assert_allclose(ema(y, weight), expected, rtol=1e-9, atol=1e-12, equal_nan=True)


def test_first_value_is_not_biased_toward_zero():
    assert ema(np.array([5.0, 5.0, 5.0]), 0.9).tolist() == pytest.approx([5.0, 5.0, 5.0])


def test_weight_out_of_range():
    with pytest.raises(ValueError, match="smoothing weight"):
        ema(np.ones(3), 1.0)
