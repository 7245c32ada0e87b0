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
import math
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
    # evaluation (eval_loss rows): overfitting = eval loss rising while the train loss falls
    overfit_min_evals: int = 5  # evaluations of a loader before the rule judges it
    overfit_last_evals: int = 3  # each of the last k evaluations must be above the bar
    overfit_rise_fraction: float = 0.05  # above its best by more than this fraction of it
    overfit_noise_multiple: float = 4.0  # and by more than this many eval-noise stds
    overfit_train_fall_fraction: float = 0.01  # train loss fell this fraction since the best

    def __post_init__(self) -> None:
        for f in fields(self):
            _check_threshold(f.name, getattr(self, f.name))

    def replace(self, **changes: Any) -> Thresholds:
        return dataclasses.replace(self, **_coerce(changes, self))


# May be 0: counts, gaps, and the fractions where 0 means "any".
_ZERO_ALLOWED = {"amp_skip_max_fraction", "plateau_fraction", "overfit_train_fall_fraction"}


def _check_threshold(name: str, value: float) -> None:
    """Finite; integers >= 0; other numbers > 0 (or >= 0); fractions at most 1."""
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"threshold {name!r} must be >= 0, got {value}")
        return
    if not math.isfinite(value):
        raise ConfigError(f"threshold {name!r} must be a finite number, got {value}")
    low_ok = name in _ZERO_ALLOWED
    if value < 0 or (value == 0 and not low_ok):
        raise ConfigError(f"threshold {name!r} must be {'>=' if low_ok else '>'} 0, got {value:g}")
    if name.endswith("_fraction") and value > 1:
        raise ConfigError(f"threshold {name!r} is a fraction (at most 1), got {value:g}")


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
        if project.is_file() and "gradlens" in _table(_read_toml(project), "tool", project):
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
        if source.name == "pyproject.toml":
            section = _table(_table(data, "tool", source), "gradlens", source, "tool.")
        else:
            section = data
    prefix = "tool.gradlens." if source is not None and source.name == "pyproject.toml" else ""
    report = _table(section, "report", source, prefix)
    unknown = set(report) - {"fail_on"}
    if unknown:
        raise ConfigError(f"{source}: unknown [{prefix}report] keys: {', '.join(sorted(unknown))}")
    fail_level = report.get("fail_on", "error")
    if not isinstance(fail_level, str):
        raise ConfigError(
            f"{source}: [{prefix}report] fail_on must be a string, got {fail_level!r}"
        )
    values = _table(section, "thresholds", source, prefix)
    try:
        thresholds = Thresholds().replace(**values)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    if overrides:
        thresholds = thresholds.replace(**overrides)
    return ReportConfig(
        fail_on=fail_on or fail_level,
        thresholds=thresholds,
        source=str(source) if source else None,
    )


def _table(data: dict[str, Any], key: str, source: Path | None, prefix: str = "") -> dict[str, Any]:
    """``data[key]`` when it is a TOML table (``{}`` when absent), else a ``ConfigError``."""
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(
            f"{source}: [{prefix}{key}] must be a table, got {type(value).__name__} {value!r}"
        )
    return value


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
