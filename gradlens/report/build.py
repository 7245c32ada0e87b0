"""Build a :class:`Report` from a run: header, findings, rule results, layers, probe sections.

Renderers (text, markdown, json, junit) only format a Report; all numbers are decided here.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from gradlens.report.config import ReportConfig
from gradlens.report.data import RunData
from gradlens.report.evaluation import evaluation_dict
from gradlens.report.findings import Finding, severity_rank
from gradlens.report.rules import RULES
from gradlens.report.sampling import Sampling
from gradlens.report.summary import RunSummary, summary_of
from gradlens.store import Run

__all__ = [
    "PROBE_SECTIONS",
    "RUN_SECTIONS",
    "Report",
    "RuleResult",
    "Section",
    "build_report",
    "exit_code",
]

SPARK_POINTS = 60
RANKED = 5  # tensors per ranking (largest, smallest)


@dataclass
class RuleResult:
    rule: str
    description: str
    status: str  # passed | failed | skipped
    findings: list[Finding] = field(default_factory=list)


@dataclass
class Section:
    """A probe table summarised as (label, value) rows."""

    title: str
    rows: list[tuple[str, str]]


@dataclass
class Report:
    run: dict[str, Any]
    fail_on: str
    findings: list[Finding]
    rules: list[RuleResult]
    loss: list[float]  # downsampled loss curve for the sparkline
    layers: dict[str, list[tuple[str, float]]]  # ranking name -> [(layer, value)]
    window: float  # the fraction of steps the layer rankings are taken over
    sections: list[Section]
    summary: RunSummary  # the numbers watch, compare, ls and the dashboard show too
    evaluation: dict[str, Any] | None = None  # evaluation.evaluation_dict; None: no eval rows
    # the metrics recorded every few steps (table → metric → steps); empty: all every step
    sampling: Sampling = field(default_factory=dict)

    @property
    def worst(self) -> str | None:
        if not self.findings:
            return None
        return max(self.findings, key=lambda f: severity_rank(f.severity)).severity

    def counts(self) -> dict[str, int]:
        out = {"error": 0, "warning": 0, "info": 0}
        for f in self.findings:
            out[f.severity] += 1
        return out


def exit_code(report: Report) -> int:
    """1 when a finding is at or above the fail level, else 0."""
    level = severity_rank(report.fail_on)
    return int(any(severity_rank(f.severity) >= level for f in report.findings))


# Probe tables → report sections; the Hessian, collapse and landscape probes register theirs.
PROBE_SECTIONS: dict[str, Callable[[RunData], Section | None]] = {}
# Sections of every run, before the probes' (evaluation, the script's logged metrics): None
# when the run has nothing for them.
RUN_SECTIONS: list[Callable[[RunData], Section | None]] = []


def build_report(run: Run, config: ReportConfig | None = None) -> Report:
    """Evaluate every rule on ``run`` and gather what the renderers show."""
    config = config or ReportConfig()
    data = RunData(run)
    results, findings = [], []
    tables = set(run.tables())
    for r in RULES:
        if any(need not in tables for need in r.needs) or (
            r.applies is not None and not r.applies(data)
        ):
            results.append(RuleResult(r.name, r.description, "skipped"))
            continue
        found = r.check(data, config.thresholds)
        findings += found
        failing = [f for f in found if severity_rank(f.severity) >= severity_rank("warning")]
        results.append(RuleResult(r.name, r.description, "failed" if failing else "passed", found))
    findings.sort(key=lambda f: (-severity_rank(f.severity), f.step_start or 0, f.rule))
    sections = [s for s in (make(data) for make in RUN_SECTIONS) if s is not None]
    for table, summarise in PROBE_SECTIONS.items():
        if table in tables:
            section = summarise(data)
            if section is not None:
                sections.append(section)
    summary = summary_of(run, data, findings)
    return Report(
        run=_header(run, data, summary),
        fail_on=config.fail_on,
        findings=findings,
        rules=results,
        loss=_downsample(data.loss),
        layers=_layer_rankings(data, config.thresholds.window_fraction),
        window=config.thresholds.window_fraction,
        sections=sections,
        summary=summary,
        evaluation=evaluation_dict(data.evaluation),
        sampling=data.sampling,
    )


def _header(run: Run, data: RunData, summary: RunSummary) -> dict[str, Any]:
    """What the report shows about the run; meta.json values of the wrong type are left out."""
    meta = run.meta
    versions = meta.get("versions")
    layers = meta.get("layers")
    if not isinstance(layers, int) or isinstance(layers, bool) or layers < 0:
        layers = len(data.layer_metric("grad_norm").columns)
    return {
        "name": summary.name,
        "path": summary.path,
        "status": summary.status,
        "steps": summary.steps,
        "start_time": summary.start_time,
        "duration_s": summary.duration_s,
        "device": _string(meta.get("device")),
        "command": _string(meta.get("command")),
        "versions": {str(k): str(v) for k, v in versions.items()}
        if isinstance(versions, dict)
        else {},
        "final_loss": summary.final_loss,  # NaN when it ended diverged
        "best_loss": summary.best_loss,
        "layers": layers,
    }


def _string(value: object) -> str | None:
    return None if value is None else str(value)


def _downsample(series: pd.Series, points: int = SPARK_POINTS) -> list[float]:
    """Bucket means; a bucket holding a NaN/Inf loss stays non-finite (drawn as ×)."""
    values = series.to_numpy(dtype=float)
    if len(values) == 0:
        return []
    edges = np.linspace(0, len(values), min(points, len(values)) + 1).astype(int)
    out = []
    for a, b in itertools.pairwise(edges):
        part = values[a:b]
        out.append(float(part.mean()) if b > a and np.isfinite(part).all() else math.nan)
    return out


def _layer_rankings(data: RunData, fraction: float) -> dict[str, list[tuple[str, float]]]:
    """Per metric: the tensors with the largest and the smallest median over the last window
    of each one's recorded steps (disjoint lists: with few tensors, each gets half), and those
    whose median is non-finite (kept out of the ranking rather than shown as a number).

    A recorded NaN/Inf counts as non-finite; a step a tensor was not recorded at (a sampled
    metric, a second optimizer's layers) is not a value at all.
    """
    out: dict[str, list[tuple[str, float]]] = {}
    for metric in ("grad_norm", "update_ratio"):
        window = data.layer_windows(metric, fraction)
        if window.empty:
            continue
        median = data.layer_summary(window, nonfinite=True)["median"].sort_values()
        ranked = median[np.isfinite(median)]
        broken = median[~np.isfinite(median)]
        shown = min(RANKED, (len(ranked) + 1) // 2)
        largest = ranked.iloc[::-1][:shown]
        smallest = ranked.drop(largest.index).iloc[: min(RANKED, len(ranked) - shown)]
        out[f"{metric}_largest"] = [(str(k), float(v)) for k, v in largest.items()]
        out[f"{metric}_smallest"] = [(str(k), float(v)) for k, v in smallest.items()]
        if len(broken):
            out[f"{metric}_nonfinite"] = [(str(k), math.nan) for k in broken.index]
    return out
