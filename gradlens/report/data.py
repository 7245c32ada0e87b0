"""The slices of a run that rules and renderers read, loaded once and lazily."""

from __future__ import annotations

from functools import cached_property

import numpy as np
import pandas as pd

from gradlens.report.evaluation import EVAL_METRICS, Evaluation, evaluation_of
from gradlens.store import Run

__all__ = ["RunData", "smooth"]


def smooth(values: pd.Series, window: int) -> pd.Series:
    """Centered rolling median: robust to the very spikes rules look for separately."""
    return values.rolling(window, center=True, min_periods=1).median()


class RunData:
    """Wide views over a run's long tables (step-indexed), read on first use."""

    def __init__(self, run: Run) -> None:
        self.run = run

    @cached_property
    def scalars(self) -> pd.DataFrame:
        """step × metric (param-group 0 for ``lr``)."""
        df = self.run.table("scalars")
        if df.empty:
            return pd.DataFrame()
        df = df[df["index"] == 0]
        return df.pivot_table(index="step", columns="metric", values="value", aggfunc="last")

    def scalar(self, metric: str) -> pd.Series:
        """The recorded values of one scalar by step (group 0), NaN and Inf included."""
        df = self._scalar_rows
        if df.empty:
            return pd.Series(dtype=float)
        part = df[df["metric"] == metric].drop_duplicates("step", keep="last")
        return part.set_index("step")["value"].astype(float).sort_index()

    @cached_property
    def _scalar_rows(self) -> pd.DataFrame:
        df = self.run.table("scalars")
        return df[df["index"] == 0] if not df.empty else df

    @cached_property
    def loss(self) -> pd.Series:
        return self.scalar("loss")

    @cached_property
    def evaluation(self) -> Evaluation | None:
        """Every loader's evaluations (``eval_*`` scalars of any index); None without."""
        if not self.run.has_table("scalars"):
            return None
        rows = self.run.table("scalars", filters=[("metric", "in", list(EVAL_METRICS))])
        return evaluation_of(rows, self.loss)

    @cached_property
    def user(self) -> pd.DataFrame:
        """The script's own scalars (``gradlens.log``): columns step, metric, value."""
        return self.table("user")

    @cached_property
    def events(self) -> pd.DataFrame:
        return self.run.table("events")

    def layer_metric(self, metric: str) -> pd.DataFrame:
        """step × layer for one per-layer metric (columns in first-seen order)."""
        return self._layers.get(metric, pd.DataFrame())

    @cached_property
    def _layers(self) -> dict[str, pd.DataFrame]:
        df = self.run.table("layers")
        if df.empty:
            return {}
        order = list(dict.fromkeys(df["layer"]))
        out = {}
        for metric, part in df.groupby("metric", sort=False):
            # pivot, not pivot_table: a NaN norm is a recorded value, not a missing one
            last = part.drop_duplicates(["step", "layer"], keep="last")
            wide = last.pivot(index="step", columns="layer", values="value").sort_index()
            out[str(metric)] = wide[[c for c in order if c in wide.columns]]
        return out

    @property
    def steps(self) -> int:
        return self.run.steps

    def last_window(self, frame: pd.DataFrame, fraction: float) -> pd.DataFrame:
        """The last ``fraction`` of the rows (at least one)."""
        n = max(1, int(np.ceil(len(frame) * fraction)))
        return frame.iloc[-n:]

    def table(self, name: str) -> pd.DataFrame:
        """Any other table (probes), empty when absent."""
        return self.run.table(name) if self.run.has_table(name) else pd.DataFrame()
