"""Min/max buckets keep the extremes a user looks for; heatmap buckets keep the max."""

from __future__ import annotations

import numpy as np
import pytest

from gradlens.dashboard.downsample import bucket_max, minmax_indices


def test_short_series_is_kept_whole():
    assert minmax_indices(np.arange(10.0), 100).tolist() == list(range(10))


def test_buckets_keep_the_spike_and_the_dip_within_budget():
    rng = np.random.default_rng(0)
    y = 1.0 + 0.01 * rng.standard_normal(100_000)
    y[31_337], y[77_001] = 50.0, -20.0
    idx = minmax_indices(y, 2000)
    assert len(idx) <= 2000
    assert np.all(np.diff(idx) > 0)
    assert 31_337 in idx and 77_001 in idx
    assert y[idx].max() == 50.0 and y[idx].min() == -20.0


def test_nonfinite_values_stay_visible():
    y = np.ones(10_000)
    y[5000] = np.nan
    y[9000:] = np.inf
    idx = minmax_indices(y, 300)
    assert len(idx) <= 300
    assert 5000 in idx  # the lone NaN leaves a gap in the line
    assert np.any(~np.isfinite(y[idx[idx >= 9000]]))


def test_all_nan_series():
    idx = minmax_indices(np.full(5000, np.nan), 100)
    assert 0 < len(idx) <= 100


def test_bucket_max_keeps_the_spike_and_ignores_nan():
    m = np.ones((3, 1000), dtype=np.float32)
    m[1, 777] = 99.0
    m[2, :] = np.nan
    m[0, 10] = np.nan
    values, starts = bucket_max(m, 10)
    assert values.shape == (3, 10) and starts.tolist() == list(range(0, 1000, 100))
    assert values[1, 7] == 99.0 and values[1].sum() == 99.0 + 9
    assert values[0, 0] == 1.0  # a NaN in a bucket does not hide its other values
    assert np.isnan(values[2]).all()


@pytest.mark.parametrize("bad", [0, 2])
def test_bad_budgets_are_rejected(bad):
    with pytest.raises(ValueError):
        minmax_indices(np.ones(10), bad) if bad else bucket_max(np.ones((1, 3)), bad)
