"""What a rule reports: a finding with a severity, a step range and numeric evidence."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["SEVERITIES", "Finding", "severity_rank"]

SEVERITIES = ("info", "warning", "error")


def severity_rank(severity: str) -> int:
    """info < warning < error; ``never`` ranks above everything (nothing reaches it)."""
    if severity == "never":
        return len(SEVERITIES)
    return SEVERITIES.index(severity)


@dataclass(frozen=True)
class Finding:
    """One problem found in a run.

    ``evidence`` is a sentence with the numbers that support it; ``value`` and ``threshold``
    are the main number and the limit it crossed (NaN when not applicable).
    """

    rule: str
    severity: str
    message: str
    evidence: str
    step_start: int | None = None
    step_end: int | None = None
    layer: str | None = None
    value: float | None = None
    threshold: float | None = None

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {self.severity!r}")

    @property
    def steps(self) -> str:
        """``"151"``, ``"151–160"`` or ``"-"``."""
        if self.step_start is None:
            return "-"
        if self.step_end is None or self.step_end == self.step_start:
            return str(self.step_start)
        return f"{self.step_start}–{self.step_end}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
