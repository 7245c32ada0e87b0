"""The slices of a run that rules and renderers read, loaded once and lazily."""

from __future__ import annotations

from functools import cached_property
from typing import TypeVar

import numpy as np
import pandas as pd

from gradlens.report.evaluation import EVAL_METRICS, Evaluation, evaluation_of
from gradlens.report.sampling import Sampling, sampling_of
from gradlens.store import Run

NONFINITE_EVENTS = ("nonfinite_loss", "nonfinite_grad")

__all__ = ["RunData", "smooth"]

FrameT = TypeVar("FrameT", pd.DataFrame, pd.Series)


def smooth(values: pd.Series, window: int) -> pd.Series:
    """Centered rolling median: robust to the very spikes rules look for separately."""
    return values.rolling(window, center=True, min_periods=1).median()


class RunData:
    """Wide views over a run's long tables (step-indexed), read on first use."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self._tables: dict[str, pd.DataFrame] = {}

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

    @cached_property
    def nonfinite_steps(self) -> set[int]:
        """Steps with a NaN/Inf loss or gradient: a ``nonfinite_loss``/``nonfinite_grad``
        event, or a gradient norm that overflowed to inf before any entry did (the one
        definition the summary, the rule and ``watch``'s closing line share)."""
        events = self.events
        bad = events[events["kind"].isin(NONFINITE_EVENTS)] if not events.empty else events
        steps = {int(s) for s in bad["step"]} if not bad.empty else set()
        norm = self.scalar("grad_norm")
        return steps | {int(s) for s in norm.index[~np.isfinite(norm.to_numpy())]}

    def layer_metric(self, metric: str) -> pd.DataFrame:
        """step × layer for one per-layer metric (columns in first-seen order)."""
        return self._layers.get(metric, pd.DataFrame())

    @cached_property
    def _layers(self) -> dict[str, pd.DataFrame]:
        out = {}
        for metric, rows in self._layer_rows.items():
            # pivot, not pivot_table: a NaN norm is a recorded value, not a missing one
            wide = rows.pivot(index="step", columns="layer", values="value").sort_index()
            out[metric] = wide[[c for c in self._layer_order if c in wide.columns]]
        return out

    @cached_property
    def _layer_order(self) -> list[str]:
        """Layer names in the order first seen (the model's order)."""
        return self._layer_read[0]

    @cached_property
    def _layer_rows(self) -> dict[str, pd.DataFrame]:
        """Per metric: its rows (step, layer, value), the last one of each (step, layer)."""
        return self._layer_read[1]

    @cached_property
    def _layer_read(self) -> tuple[list[str], dict[str, pd.DataFrame]]:
        df = self.run.table("layers")
        if df.empty:
            return [], {}
        rows = {
            str(metric): part.drop_duplicates(["step", "layer"], keep="last")
            for metric, part in df.groupby("metric", sort=False)
        }
        return list(pd.unique(df["layer"])), rows

    def layer_windows(self, metric: str, fraction: float) -> pd.DataFrame:
        """Rows (step, layer, value; NaN included) of each layer's last ``fraction`` of its
        own recorded steps, as :meth:`last_window` takes them.

        Each layer on its own: a sampled metric (every ``param_every`` steps) and the layers of
        a second optimizer (its own step count) are not recorded at every step of the run, so
        a shared step window would hold gaps that read as missing or non-finite values.
        """
        rows = self._layer_rows.get(metric)
        if rows is None:
            return pd.DataFrame({"step": [], "layer": [], "value": []})
        by_layer = rows.groupby("layer", sort=False, observed=True)["step"]
        first, last = by_layer.transform("min"), by_layer.transform("max")
        span = np.maximum(1, np.ceil((last - first + 1) * fraction))
        return rows.loc[rows["step"] > last - span, ["step", "layer", "value"]]

    def layer_summary(self, window: pd.DataFrame, nonfinite: bool = False) -> pd.DataFrame:
        """Per layer of a :meth:`layer_windows` frame, in the model's order: ``median`` (NaN
        values skipped, or with ``nonfinite`` counted as +inf), ``count``, ``first`` and
        ``last`` step."""
        values = window["value"].astype(float)
        if nonfinite:
            values = values.where(np.isfinite(values), np.inf)
        grouped = window.assign(value=values).groupby("layer", sort=False, observed=True)
        out = grouped.agg(
            median=("value", "median"),
            count=("value", "size"),
            first=("step", "min"),
            last=("step", "max"),
        )
        return out.reindex([name for name in self._layer_order if name in out.index])

    @cached_property
    def sampling(self) -> Sampling:
        """The metrics of this run recorded every few steps (table → metric → steps)."""
        present = {"layers": set(self._layer_rows)}
        softmax = self.table("softmax")
        if "metric" in softmax:
            present["softmax"] = set(softmax["metric"].astype(str))
        return sampling_of(self.run.meta, present)

    @property
    def steps(self) -> int:
        return self.run.steps

    def last_window(self, frame: FrameT, fraction: float) -> FrameT:
        """The rows of the last ``fraction`` of the steps ``frame`` spans (at least its last
        row): the last ``fraction`` of the rows of a per-step frame, and the same span of
        steps for a frame recorded every few steps."""
        if len(frame) == 0:
            return frame
        first, last = int(frame.index.min()), int(frame.index.max())
        span = max(1, int(np.ceil((last - first + 1) * fraction)))
        window = frame[frame.index > last - span]
        return window if len(window) else frame.iloc[-1:]

    def table(self, name: str) -> pd.DataFrame:
        """Any other table (probes), empty when absent; read once."""
        if name not in self._tables:
            has = self.run.has_table(name)
            self._tables[name] = self.run.table(name) if has else pd.DataFrame()
        return self._tables[name]
