"""Downsampling that keeps extremes: min/max buckets for lines, max buckets for heatmaps.

A long run has far more steps than a screen has pixels. Averaging would hide the one spike a
user is looking for, so each bucket keeps its minimum and its maximum (lines) or its maximum
(heatmap cells); non-finite values are kept visible.
"""

from __future__ import annotations

import numpy as np

__all__ = ["bucket_max", "minmax_indices"]


def minmax_indices(values: np.ndarray, max_points: int = 2000) -> np.ndarray:
    """Sorted indices into ``values`` to plot: the min and max of each bucket.

    At most ``max_points`` indices. A bucket with a non-finite value also keeps its first
    non-finite index (then buckets are fewer, so the total stays within ``max_points``).

    Example:
        >>> y = np.zeros(10_000); y[1234] = 9.0
        >>> 1234 in minmax_indices(y, 100)
        True
    """
    if max_points < 3:
        raise ValueError(f"max_points must be at least 3, got {max_points}")
    y = np.asarray(values, dtype=np.float64)
    n = y.size
    if n <= max_points:
        return np.arange(n)
    finite = np.isfinite(y)
    per_bucket = 2 if finite.all() else 3
    buckets = max_points // per_bucket
    width = -(-n // buckets)  # ceil
    buckets = -(-n // width)
    pad = buckets * width - n
    grid_ok = np.concatenate([finite, np.zeros(pad, dtype=bool)]).reshape(buckets, width)
    grid = np.concatenate([y, np.full(pad, np.nan)]).reshape(buckets, width)
    base = np.arange(buckets) * width
    lows = np.argmin(np.where(grid_ok, grid, np.inf), axis=1)
    highs = np.argmax(np.where(grid_ok, grid, -np.inf), axis=1)
    picks = [base + lows, base + highs]  # all-non-finite buckets give their first index
    if per_bucket == 3:
        real = np.concatenate([np.ones(n, dtype=bool), np.zeros(pad, dtype=bool)])
        bad = ~grid_ok & real.reshape(buckets, width)
        has_bad = bad.any(axis=1)
        picks.append((base + np.argmax(bad, axis=1))[has_bad])
    out = np.unique(np.concatenate(picks))
    return out[out < n]


def bucket_max(values: np.ndarray, buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """Column buckets of a 2-D array: (max over each bucket ignoring NaN, bucket starts).

    ``values`` is rows × columns; the result has at most ``buckets`` columns. A bucket whose
    values are all NaN stays NaN; +inf wins the max.
    """
    if buckets < 1:
        raise ValueError(f"buckets must be positive, got {buckets}")
    matrix = np.asarray(values)
    columns = matrix.shape[1]
    if columns <= buckets:
        return matrix.copy(), np.arange(columns)
    width = -(-columns // buckets)
    starts = np.arange(0, columns, width)
    return np.fmax.reduceat(matrix, starts, axis=1), starts
