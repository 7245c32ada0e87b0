"""One definition per evaluation number: best and last eval loss/accuracy, the train loss at an
evaluation, the generalization gap, the noise between evaluations.

Evaluation rows are ``scalars`` metrics ``eval_loss``, ``eval_accuracy`` (a fraction) and
``eval_samples`` at the step of the last optimizer step before the evaluation, with ``index``
the loader's place in that evaluation phase (0 = the first loader evaluated, e.g. val; 1 =
the second, e.g. test). The report, its overfitting rule and the dashboard read them here.

    >>> evaluation = RunData(open_run("runs/grokking")).evaluation       # doctest: +SKIP
    >>> evaluation.loaders[0].best_loss                                  # (value, step)
    (0.0123, 4900)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = [
    "EVAL_DEFINITIONS",
    "EVAL_METRICS",
    "Evaluation",
    "LoaderEvaluation",
    "eval_noise",
    "evaluation_dict",
    "evaluation_of",
    "loader_frames",
    "train_loss_at",
]

EVAL_METRICS = ("eval_loss", "eval_accuracy", "eval_samples")

# What each number means, in the words the renderers print next to it.
EVAL_DEFINITIONS = {
    "best_eval_loss": "lowest eval loss of any evaluation",
    "last_eval_loss": "eval loss of the last evaluation",
    "best_eval_accuracy": "highest eval accuracy of any evaluation",
    "last_eval_accuracy": "eval accuracy of the last evaluation",
    "train_loss_at_eval": "median training loss over the steps since the previous evaluation",
    "generalization_gap": "eval loss − training loss at the evaluation",
    "eval_noise": "std of one evaluation's fluctuation around the trend: std(Δ²)/√6",
}


def loader_frames(rows: pd.DataFrame) -> dict[int, pd.DataFrame]:
    """Scalars rows (step, metric, index, value) → per loader index a step-indexed frame with
    one column per evaluation metric (the last value where a step repeats)."""
    if rows.empty:
        return {}
    rows = rows[rows["metric"].isin(EVAL_METRICS)]
    out = {}
    for index, part in rows.groupby("index", sort=True):
        last = part.drop_duplicates(["step", "metric"], keep="last")
        wide = last.pivot(index="step", columns="metric", values="value").sort_index()
        if "eval_loss" not in wide:
            continue  # accuracy without a loss is not an evaluation gradlens recorded
        out[int(index)] = wide.reindex(columns=list(EVAL_METRICS)).astype(float)
    return out


def train_loss_at(loss: pd.Series, eval_steps: np.ndarray) -> np.ndarray:
    """The training loss at each evaluation: the median finite loss of the steps after the
    previous evaluation up to and including this one.

    The first evaluation looks back as many steps as the median distance between evaluations
    (all steps before it when there is one evaluation). The median, not the mean: one loss
    spike between two evaluations is not the trend (the spike rules report spikes). NaN where
    the window holds no finite loss.
    """
    eval_steps = np.asarray(eval_steps, dtype=np.int64)
    out = np.full(len(eval_steps), np.nan)
    if loss.empty or len(eval_steps) == 0:
        return out
    steps = loss.index.to_numpy(dtype=np.int64)
    values = loss.to_numpy(dtype=float)
    order = np.argsort(steps, kind="stable")
    steps, values = steps[order], values[order]
    gap = int(np.median(np.diff(eval_steps))) if len(eval_steps) > 1 else None
    for i, step in enumerate(eval_steps):
        if i > 0:
            after = eval_steps[i - 1]
        else:
            after = step - gap if gap is not None else np.iinfo(np.int64).min
        lo = np.searchsorted(steps, after, side="right")
        hi = np.searchsorted(steps, step, side="right")
        window = values[lo:hi]
        window = window[np.isfinite(window)]
        if window.size:
            out[i] = float(np.median(window))
    return out


def eval_noise(eval_loss: pd.Series | np.ndarray) -> float:
    """How much one evaluation's loss fluctuates around its trend: std(Δ²)/√6.

    Second differences cancel a linear trend (and nearly a smooth curve), so a falling or
    rising eval loss is not counted as noise; for independent noise of std σ, Δ² has std
    σ√6. A plain std, not a robust one: one outlying evaluation widens the estimate, which
    makes the overfitting rule quieter, never louder (a robust MAD on 20 evaluations
    underestimates σ often enough to let pure noise fire). NaN with fewer than three finite
    evaluations.
    """
    values = np.asarray(eval_loss, dtype=float)
    values = values[np.isfinite(values)]
    if values.size < 3:
        return math.nan
    second = np.diff(values, n=2)
    return float(np.std(second)) / math.sqrt(6.0)


@dataclass(frozen=True)
class LoaderEvaluation:
    """One loader's evaluations (see :data:`EVAL_DEFINITIONS` for every number)."""

    index: int
    steps: np.ndarray  # the steps of its evaluations
    eval_loss: np.ndarray
    eval_accuracy: np.ndarray  # NaN where not classification
    eval_samples: np.ndarray
    train_loss: np.ndarray  # train_loss_at(...) at each evaluation

    @property
    def evaluations(self) -> int:
        return len(self.steps)

    @property
    def gap(self) -> np.ndarray:
        """The generalization gap at each evaluation: eval loss − training loss."""
        return self.eval_loss - self.train_loss

    def _best(self, values: np.ndarray, highest: bool) -> tuple[float | None, int | None]:
        finite = np.isfinite(values)
        if not finite.any():
            return None, None
        masked = np.where(finite, values, -np.inf if highest else np.inf)
        i = int(np.argmax(masked) if highest else np.argmin(masked))  # the first best
        return float(values[i]), int(self.steps[i])

    @property
    def best_loss(self) -> tuple[float | None, int | None]:
        """(lowest eval loss, its step)."""
        return self._best(self.eval_loss, highest=False)

    @property
    def best_accuracy(self) -> tuple[float | None, int | None]:
        """(highest eval accuracy, its step); None without accuracy rows."""
        return self._best(self.eval_accuracy, highest=True)

    @property
    def last_loss(self) -> float | None:
        return _number(self.eval_loss[-1]) if self.evaluations else None

    @property
    def last_accuracy(self) -> float | None:
        return _number(self.eval_accuracy[-1]) if self.evaluations else None

    @property
    def last_step(self) -> int | None:
        return int(self.steps[-1]) if self.evaluations else None

    @property
    def samples(self) -> float | None:
        """Samples of the last evaluation."""
        return _number(self.eval_samples[-1]) if self.evaluations else None

    @property
    def has_accuracy(self) -> bool:
        return bool(np.isfinite(self.eval_accuracy).any())


@dataclass(frozen=True)
class Evaluation:
    """Every loader's evaluations of a run."""

    loaders: list[LoaderEvaluation]

    @property
    def steps(self) -> np.ndarray:
        """The distinct steps at which the run evaluated (any loader)."""
        if not self.loaders:
            return np.empty(0, dtype=np.int64)
        return np.unique(np.concatenate([loader.steps for loader in self.loaders]))


def evaluation_of(rows: pd.DataFrame, loss: pd.Series) -> Evaluation | None:
    """The run's evaluations from its eval scalars rows and its training loss; None without."""
    frames = loader_frames(rows)
    if not frames:
        return None
    loaders = []
    for index, frame in frames.items():
        steps = frame.index.to_numpy(dtype=np.int64)
        loaders.append(
            LoaderEvaluation(
                index=index,
                steps=steps,
                eval_loss=frame["eval_loss"].to_numpy(dtype=float),
                eval_accuracy=frame["eval_accuracy"].to_numpy(dtype=float),
                eval_samples=frame["eval_samples"].to_numpy(dtype=float),
                train_loss=train_loss_at(loss, steps),
            )
        )
    return Evaluation(loaders)


def _number(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def evaluation_dict(evaluation: Evaluation | None) -> dict[str, object] | None:
    """The evaluation numbers for the JSON report (NaN stays NaN; the renderer nulls it)."""
    if evaluation is None:
        return None
    loaders = []
    for loader in evaluation.loaders:
        best_loss, best_loss_step = loader.best_loss
        best_acc, best_acc_step = loader.best_accuracy
        loaders.append(
            {
                "index": loader.index,
                "evaluations": loader.evaluations,
                "first_step": int(loader.steps[0]),
                "last_step": loader.last_step,
                "best_loss": best_loss,
                "best_loss_step": best_loss_step,
                "last_loss": loader.last_loss,
                "best_accuracy": best_acc,
                "best_accuracy_step": best_acc_step,
                "last_accuracy": loader.last_accuracy,
                "samples": loader.samples,
                "gap": [
                    {
                        "step": int(step),
                        "eval_loss": float(e),
                        "train_loss": float(tr),
                        "gap": float(g),
                    }
                    for step, e, tr, g in zip(
                        loader.steps, loader.eval_loss, loader.train_loss, loader.gap, strict=True
                    )
                ],
            }
        )
    return {"definitions": dict(EVAL_DEFINITIONS), "loaders": loaders}
