"""Report thresholds and fail level: defaults, ``[tool.gradlens]`` / ``gradlens.toml``, CLI.

Precedence: CLI options > ``--config FILE`` > ``gradlens.toml`` > ``pyproject.toml``'s
``[tool.gradlens]`` (both found by walking up from the current directory) > defaults.

    [tool.gradlens.report]          # gradlens.toml: [report]
    fail_on = "error"
    [tool.gradlens.thresholds]      # gradlens.toml: [thresholds]
    loss_spike_max_clusters = 3
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from gradlens.errors import ConfigError

__all__ = ["FAIL_LEVELS", "ReportConfig", "Thresholds", "find_config_file", "load_config"]

FAIL_LEVELS = ("warning", "error", "never")


@dataclass(frozen=True)
class Thresholds:
    """Every number a rule compares against; docs/report.md gives the reasoning for each."""

    # spikes (events from capture): clusters = spikes within `spike_gap` steps of each other
    spike_gap: int = 10
    loss_spike_max_clusters: int = 3  # more clusters than this: error
    loss_recovery_steps: int = 50  # loss back within `loss_recovery_ratio` × baseline by then
    loss_recovery_ratio: float = 1.5
    grad_spike_max_clusters: int = 3
    # AMP
    amp_skip_max_fraction: float = 0.05
    amp_skip_min_count: int = 10
    # layers: gradient norm relative to the median tensor, sustained over the last window
    window_fraction: float = 0.2  # the "last window" is this fraction of the steps
    exploding_ratio: float = 1e3
    vanishing_ratio: float = 1e-4
    sustain_fraction: float = 0.8  # of the window's steps
    # update / parameter ratio (median over the last window)
    update_ratio_max: float = 0.1
    update_ratio_min: float = 1e-6
    # loss trend
    divergence_ratio: float = 1.5  # final smoothed loss / best smoothed loss
    plateau_fraction: float = 0.01  # last-half improvement below this fraction of the total
    min_steps_for_trend: int = 20
    # probes (used when their tables exist)
    eos_ratio: float = 1.0  # sharpness / (2/lr) at or above this
    softmax_collapse_fraction: float = 0.2
    softmax_collapse_min_steps: int = 5  # steps at or above the fraction
    nc_regression_ratio: float = 1.5  # final CDNV / best CDNV

    def replace(self, **changes: Any) -> Thresholds:
        return dataclasses.replace(self, **_coerce(changes, self))


@dataclass(frozen=True)
class ReportConfig:
    fail_on: str = "error"
    thresholds: Thresholds = field(default_factory=Thresholds)
    source: str | None = None  # the file the settings came from

    def __post_init__(self) -> None:
        if self.fail_on not in FAIL_LEVELS:
            raise ConfigError(
                f"fail_on must be one of {', '.join(FAIL_LEVELS)}, got {self.fail_on!r}"
            )


def find_config_file(start: Path) -> Path | None:
    """The nearest ``gradlens.toml``, or ``pyproject.toml`` holding ``[tool.gradlens]``."""
    for folder in [start, *start.parents]:
        own = folder / "gradlens.toml"
        if own.is_file():
            return own
        project = folder / "pyproject.toml"
        if project.is_file() and "gradlens" in _read_toml(project).get("tool", {}):
            return project
    return None


def load_config(
    path: Path | None = None,
    start: Path | None = None,
    fail_on: str | None = None,
    overrides: dict[str, str] | None = None,
) -> ReportConfig:
    """Settings from ``path`` (or the nearest config file), then ``fail_on``/``overrides``."""
    source = path or find_config_file(start or Path.cwd())
    section: dict[str, Any] = {}
    if source is not None:
        if not source.is_file():
            raise ConfigError(f"config file not found: {source}")
        data = _read_toml(source)
        section = (
            data.get("tool", {}).get("gradlens", {}) if source.name == "pyproject.toml" else data
        )
    report = section.get("report", {})
    unknown = set(report) - {"fail_on"}
    if unknown:
        raise ConfigError(f"{source}: unknown [report] keys: {', '.join(sorted(unknown))}")
    thresholds = Thresholds().replace(**section.get("thresholds", {}))
    if overrides:
        thresholds = thresholds.replace(**overrides)
    return ReportConfig(
        fail_on=fail_on or report.get("fail_on", "error"),
        thresholds=thresholds,
        source=str(source) if source else None,
    )


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _coerce(changes: dict[str, Any], base: Thresholds) -> dict[str, Any]:
    known = {f.name: f for f in fields(base)}
    out: dict[str, Any] = {}
    for name, value in changes.items():
        if name not in known:
            raise ConfigError(f"unknown threshold {name!r}; known: {', '.join(sorted(known))}")
        kind = type(getattr(base, name))
        try:
            if isinstance(value, bool):
                raise TypeError
            number = float(value)
            if kind is int and not number.is_integer():
                raise ValueError
            out[name] = kind(number)
        except (TypeError, ValueError):
            raise ConfigError(
                f"threshold {name!r} needs {'an integer' if kind is int else 'a number'}, "
                f"got {value!r}"
            ) from None
    return out
