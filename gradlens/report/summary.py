"""One definition per number: final loss, spikes, non-finite steps, health.

``watch``'s closing line, ``report``, ``compare``, ``ls`` and the dashboard print these numbers;
they all come from here, so the same word never means two numbers.

    >>> summary = summarize(open_run("runs/mlp"))          # doctest: +SKIP
    >>> summary.final_loss, summary.health
    (0.8954, 'no findings')
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from gradlens.report.config import ReportConfig
from gradlens.report.data import RunData
from gradlens.report.findings import Finding
from gradlens.store import Run

__all__ = [
    "DEFINITIONS",
    "FINAL_FRACTION",
    "RunSummary",
    "best_loss",
    "final_loss",
    "health_text",
    "spike_steps",
    "summarize",
    "summary_of",
]

FINAL_FRACTION = 0.05  # "final loss" is the mean over this last fraction of the steps

# What each number means, in the words the renderers print next to it.
DEFINITIONS = {
    "final_loss": "mean of last 5% of steps",
    "best_loss": "lowest step",
    "loss_spike_steps": "steps with a loss spike",
    "grad_spike_steps": "steps with a gradient-norm spike, global or in any layer",
    "nonfinite_steps": "steps with a NaN/Inf loss or gradient (norm)",
    "health": "findings by severity",
}

_LOSS_SPIKES = ("loss_spike",)
_GRAD_SPIKES = ("grad_spike", "layer_grad_spike")


def final_loss(loss: pd.Series) -> float | None:
    """Mean loss over the last 5% of the recorded steps (at least one step).

    NaN when any of those steps is non-finite: a run that ends diverged has no final loss.
    None when no loss was recorded.
    """
    values = loss.to_numpy(dtype=float)
    if len(values) == 0:
        return None
    tail = values[-max(1, math.ceil(len(values) * FINAL_FRACTION)) :]
    return float(tail.mean()) if np.isfinite(tail).all() else math.nan


def best_loss(loss: pd.Series) -> float | None:
    """The lowest finite loss of any single step; None when there is none."""
    values = loss.to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    return float(finite.min()) if len(finite) else None


def _steps_with(events: pd.DataFrame, kinds: tuple[str, ...]) -> int:
    if events.empty or "kind" not in events:
        return 0
    return int(events.loc[events["kind"].isin(kinds), "step"].nunique())


def spike_steps(events: pd.DataFrame) -> tuple[int, int]:
    """(steps with a loss spike, steps with a gradient-norm spike — global or any layer)."""
    return _steps_with(events, _LOSS_SPIKES), _steps_with(events, _GRAD_SPIKES)


def health_text(counts: dict[str, int] | None) -> str:
    """``no findings``, ``no errors, 2 warnings``, ``1 error, 3 warnings``…"""
    if counts is None:
        return "-"
    errors, warnings, infos = (
        counts.get("error", 0),
        counts.get("warning", 0),
        counts.get("info", 0),
    )
    if not errors and not warnings:
        return f"no errors or warnings ({infos} info)" if infos else "no findings"
    parts = [_plural(errors, "error") if errors else "no errors"]
    if warnings:
        parts.append(_plural(warnings, "warning"))
    return ", ".join(parts)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


@dataclass(frozen=True)
class RunSummary:
    """The numbers every command shows for a run (see :data:`DEFINITIONS`)."""

    name: str
    path: str
    status: str
    steps: int
    start_time: float | None
    duration_s: float | None
    final_loss: float | None
    best_loss: float | None
    loss_spike_steps: int
    grad_spike_steps: int
    nonfinite_steps: int
    counts: dict[str, int] | None  # findings by severity; None when the rules were not run

    @property
    def health(self) -> str:
        return health_text(self.counts)

    @property
    def worst(self) -> str | None:
        """The most severe finding's severity, or None."""
        for severity in ("error", "warning", "info"):
            if self.counts and self.counts.get(severity):
                return severity
        return None

    @property
    def worst_count(self) -> str:
        """The worst severity and how many findings have it: ``1 error``, ``2 warnings``."""
        if self.counts is None:
            return "-"
        worst = self.worst
        if worst is None:
            return "no findings"
        return (
            _plural(self.counts[worst], worst) if worst != "info" else f"{self.counts[worst]} info"
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "health": self.health}


def summarize(run: Run, config: ReportConfig | None = None, findings: bool = True) -> RunSummary:
    """The summary of ``run``; ``findings=False`` skips the rules (``counts`` is then None).

    Raises what reading the run raises (``GradlensError``, ``ValueError``, ``OSError``).
    """
    if not findings:
        return summary_of(run, RunData(run), None)
    from gradlens.report.build import build_report

    return build_report(run, config).summary


def summary_of(run: Run, data: RunData, findings: list[Finding] | None) -> RunSummary:
    """The summary from a run's data and the findings its rules produced."""
    counts = None
    if findings is not None:
        counts = {"error": 0, "warning": 0, "info": 0}
        for f in findings:
            counts[f.severity] += 1
    loss_spikes, grad_spikes = spike_steps(data.events)
    start, duration = _finite(run.start_time), _finite(run.duration)
    return RunSummary(
        name=run.name,
        path=str(run.path),
        status=run.status,
        steps=run.steps,
        start_time=start,
        duration_s=duration if start is not None else None,
        final_loss=final_loss(data.loss),
        best_loss=best_loss(data.loss),
        loss_spike_steps=loss_spikes,
        grad_spike_steps=grad_spikes,
        nonfinite_steps=len(data.nonfinite_steps),
        counts=counts,
    )


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
