"""TensorBoard's smoothing: an exponential moving average, debiased at the start."""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["ema"]


def ema(values: np.ndarray, weight: float) -> np.ndarray:
    """Debiased EMA of ``values`` with smoothing ``weight`` in [0, 1).

    Matches TensorBoard's scalar smoothing: ``s_t = m_t / (1 - weight**n_t)`` with
    ``m_t = weight * m_{t-1} + (1 - weight) * y_t`` over the ``n_t`` finite values so far.
    Non-finite values are skipped by the average and kept as they are, so NaN stays visible.

    Example:
        >>> ema(np.array([1.0, 3.0]), 0.5).tolist()
        [1.0, 2.333333333333333]
    """
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smoothing weight must be in [0, 1), got {weight}")
    y = np.asarray(values, dtype=np.float64)
    if weight == 0.0 or y.size == 0:
        return y.copy()
    finite = np.isfinite(y)
    # pandas' adjusted EWM is exactly the debiased form (weights w**i normalised by their sum)
    smoothed = pd.Series(np.where(finite, y, np.nan)).ewm(alpha=1.0 - weight, ignore_na=True)
    out = smoothed.mean().to_numpy(dtype=np.float64, copy=True)
    out[~finite] = y[~finite]
    return out
