"""Small formatting helpers shared by the renderers."""

from __future__ import annotations

import math
import time

__all__ = ["duration", "loss_value", "number", "sparkline", "timestamp"]

_BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float]) -> str:
    """Unicode bars; log scale when the values span more than a factor of 20."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return ""
    lo, hi = min(finite), max(finite)
    use_log = lo > 0 and hi / lo > 20
    if use_log:
        lo, hi = math.log(lo), math.log(hi)
    span = hi - lo or 1.0
    out = []
    for v in values:
        if not math.isfinite(v):
            out.append("×")
            continue
        x = math.log(v) if use_log else v
        out.append(_BARS[min(len(_BARS) - 1, int((x - lo) / span * len(_BARS)))])
    return "".join(out)


def number(value: float | None) -> str:
    """4 significant digits; ``-`` for a missing value (None or NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4g}"


def loss_value(value: float | None) -> str:
    """Like :func:`number`, but a recorded NaN/Inf loss says so."""
    if value is not None and not math.isfinite(value):
        return "non-finite"
    return number(value)


def duration(seconds: float | None) -> str:
    """``75.2`` → ``1m15s``; None, NaN or Inf → ``-``."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def timestamp(value: float | None) -> str:
    """Local time of a Unix timestamp; ``-`` for None or one no clock can show."""
    if value is None:
        return "-"
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))
    except (OverflowError, OSError, ValueError):
        return "-"
