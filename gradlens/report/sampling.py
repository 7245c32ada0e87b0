"""Which metrics a run recorded every few optimizer steps instead of at every step.

``Lens(param_every=10, softmax_every=20, cos_every=20)`` (saved under ``config`` in
``meta.json``) reads ‖θ‖, ‖Δθ‖ and ‖Δθ‖/‖θ‖ every ``param_every`` steps (and at the steps a
probe follows), the softmax signals every ``softmax_every`` and the gradient/weight cosines
every ``cos_every`` steps; gradient norms, loss and non-finite flags stay every step. A run
recorded before these options has none of the keys: everything was read every step. So does a
run whose parameters were updated by hand (``optimizers`` empty): its ‖θ‖ and ‖Δθ‖ are read at
every step whatever ``param_every`` says.

    >>> sampling_of({"config": {"param_every": 10, "softmax_every": 20}})["layers"]
    {'param_norm': 10, 'update_norm': 10, 'update_ratio': 10}
    >>> sampling_note(sampling_of({"config": {"param_every": 10}}))
    '‖θ‖, ‖Δθ‖, ‖Δθ‖/‖θ‖ every 10 steps'
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

__all__ = [
    "COSINE",
    "PARAM_METRICS",
    "SOFTMAX_SIGNALS",
    "Sampling",
    "every_label",
    "every_of",
    "sampling_note",
    "sampling_of",
]

Sampling = dict[str, dict[str, int]]  # table → metric → recorded every this many steps (> 1)

PARAM_METRICS = ("param_norm", "update_norm", "update_ratio")  # the layers table
# The softmax table's per-step signals (gradlens.functional.softmax.SOFTMAX_STATS and the
# drifts the writer adds); written out here: the report never imports torch.
SOFTMAX_SIGNALS = (
    "saturated_fraction",
    "zero_loss_fraction",
    "max_logit_gap",
    "mean_logit_gap",
    "log_z_mean",
    "log_z_max",
    "logit_norm",
    "accuracy",
    "num_samples",
    "log_z_drift",
    "logit_norm_growth",
)
COSINE = "grad_weight_cos"  # the softmax table: per tensor and "" (all parameters)

# How the notes name each group of metrics.
_GROUPS = (
    ("layers", PARAM_METRICS, "‖θ‖, ‖Δθ‖, ‖Δθ‖/‖θ‖"),
    ("softmax", SOFTMAX_SIGNALS, "softmax signals"),
    ("softmax", (COSINE,), "cos(gradient, weights)"),
)


def sampling_of(
    meta: Mapping[str, Any], present: Mapping[str, Collection[str]] | None = None
) -> Sampling:
    """The run's sampled metrics by table, from ``meta.json``; empty for an older run.

    ``present`` (table → metric names the run has) keeps only the metrics it recorded.
    """
    config = meta.get("config")
    if not isinstance(config, Mapping):
        return {}
    # Hand-written updates (no optimizer) read θ and Δθ at every step: param_every is moot.
    manual = meta.get("optimizers") == []
    schedules = (
        ("layers", PARAM_METRICS, None if manual else config.get("param_every")),
        ("softmax", SOFTMAX_SIGNALS, config.get("softmax_every")),
        ("softmax", (COSINE,), config.get("cos_every")),
    )
    out: Sampling = {}
    for table, metrics, value in schedules:
        every = _steps(value)
        if every <= 1:
            continue
        shown = [m for m in metrics if present is None or m in present.get(table, ())]
        out.setdefault(table, {}).update(dict.fromkeys(shown, every))
    return {table: metrics for table, metrics in out.items() if metrics}


def every_of(sampling: Sampling, table: str, metric: str) -> int:
    """Every how many steps ``metric`` of ``table`` was recorded (1: every step)."""
    return sampling.get(table, {}).get(metric, 1)


def every_label(every: int) -> str:
    """``every 10 steps``; ``every step`` for 1."""
    return "every step" if every <= 1 else f"every {every} steps"


def sampling_note(sampling: Sampling) -> str:
    """One line naming the sampled metrics by group and schedule; empty when none is.

    ``‖θ‖, ‖Δθ‖, ‖Δθ‖/‖θ‖ every 10 steps; softmax signals, cos(gradient, weights) every 20
    steps``
    """
    by_every: dict[int, list[str]] = {}
    for table, metrics, label in _GROUPS:
        recorded = sampling.get(table, {})
        everies = sorted({recorded[m] for m in metrics if m in recorded})
        for every in everies:
            by_every.setdefault(every, []).append(label)
    return "; ".join(
        f"{', '.join(labels)} {every_label(every)}" for every, labels in by_every.items()
    )


def _steps(value: object) -> int:
    """A schedule from meta.json: a positive int, else 1 (unknown: read every step)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    return 1
