"""Rules: small functions from a run's tables to findings.

Each rule has a name, the tables it needs (without them it is *skipped*, not passed), a
one-line description and the reasoning or paper behind its default thresholds (kept in
docs/report.md, where every threshold is argued). Rules never raise on odd data: a rule that
cannot decide returns no finding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from gradlens.report.config import Thresholds
from gradlens.report.data import NONFINITE_EVENTS, RunData, smooth
from gradlens.report.evaluation import eval_noise
from gradlens.report.findings import Finding
from gradlens.report.sampling import every_label, every_of

__all__ = ["RULES", "Rule", "rule"]


def _times(ratio: float) -> str:
    """``19.9×``, or ``2.88e+08×`` for the ratios of a blow-up."""
    return f"{ratio:.1f}×" if abs(ratio) < 1000 else f"{ratio:.3g}×"


Check = Callable[[RunData, Thresholds], list[Finding]]
MAX_FINDINGS_PER_RULE = 10


@dataclass(frozen=True)
class Rule:
    name: str
    description: str
    needs: tuple[str, ...]
    check: Check
    applies: Callable[[RunData], bool] | None = None  # False: skipped (e.g. no eval rows)


RULES: list[Rule] = []


def rule(
    name: str,
    description: str,
    needs: tuple[str, ...] = (),
    applies: Callable[[RunData], bool] | None = None,
) -> Callable[[Check], Check]:
    """Register ``check`` as rule ``name``; without ``needs`` tables, or when ``applies``
    says no, the rule is skipped rather than passed."""

    def register(check: Check) -> Check:
        RULES.append(Rule(name, description, needs, check, applies))
        return check

    return register


# -- run-level -----------------------------------------------------------------------------------


@rule("run_status", "the run finished (not failed, crashed or interrupted)")
def run_status(data: RunData, t: Thresholds) -> list[Finding]:
    run = data.run
    status, steps = run.status, run.steps
    last = steps - 1 if steps else None
    if status == "failed":
        error = run.meta.get("error") or f"exit code {run.meta.get('exit_code')}"
        return [
            Finding(
                "run_status",
                "error",
                "training failed",
                f"{error} after {steps} steps",
                step_start=last,
            )
        ]
    if status == "crashed":
        return [
            Finding(
                "run_status",
                "error",
                "run crashed (never finalized)",
                f"process gone; {steps} steps flushed",
                step_start=last,
            )
        ]
    if status == "interrupted":
        return [
            Finding(
                "run_status",
                "warning",
                "run interrupted",
                f"{run.meta.get('error') or 'interrupted'} after {steps} steps",
                step_start=last,
            )
        ]
    if status == "running":
        return [
            Finding(
                "run_status",
                "info",
                "run still being written",
                f"{steps} steps flushed so far",
                step_start=last,
            )
        ]
    if steps == 0:  # gradlens saw no optimizer step: nothing below could be checked
        return [
            Finding(
                "run_status",
                "error",
                "no training step recorded",
                "the run finished without a single optimizer step (or backward, for manual "
                "updates) that gradlens could see",
            )
        ]
    return []


@rule("gradlens_health", "every gradlens feature ran (none disabled, no signal unavailable)")
def gradlens_health(data: RunData, t: Thresholds) -> list[Finding]:
    """gradlens switched a feature off after an internal error (the numbers it would have
    recorded are missing), or could not get a signal on this run (said why)."""
    meta = data.run.meta
    findings = []
    for key, severity, message in (
        ("disabled", "warning", "gradlens disabled {} after an internal error"),
        ("unavailable", "info", "{} unavailable on this run"),
    ):
        entries = meta.get(key)
        if not isinstance(entries, dict):
            continue
        for feature, reason in sorted(entries.items()):
            findings.append(
                Finding("gradlens_health", severity, message.format(feature), str(reason))
            )
    scope = meta.get("probe_scope")
    if isinstance(scope, dict) and scope.get("module"):
        findings.append(Finding("gradlens_health", "info", *_scope_text(scope)))
    return findings[:MAX_FINDINGS_PER_RULE]


def _scope_text(scope: dict[str, Any]) -> tuple[str, str]:
    """What the probes measured when their module holds part of the trained parameters."""
    module = scope["module"]
    share = ""
    if isinstance(scope.get("parameters"), int) and isinstance(scope.get("trained"), int):
        share = f" ({scope['parameters']:,} of the {scope['trained']:,} trained parameters)"
    return (
        f"probes measure {module} only",
        f"the loss was replayed through {module}{share} with its inputs held fixed: "
        "Hessian, landscape and ghost numbers are of that block",
    )


@rule("nonfinite", "no NaN/Inf loss or gradients", needs=("scalars",))
def nonfinite(data: RunData, t: Thresholds) -> list[Finding]:
    events = data.events
    bad = events[events["kind"].isin(NONFINITE_EVENTS)]
    # A norm can overflow to inf before any entry does: the scalars say so, events do not.
    norm = data.scalar("grad_norm")
    overflow = {int(step) for step in norm.index[~np.isfinite(norm.to_numpy())]}
    bad_steps = data.nonfinite_steps
    if not bad_steps:
        return []
    first, last = min(bad_steps), max(bad_steps)
    steps = len(bad_steps)
    grads = bad[bad["kind"] == "nonfinite_grad"]
    layer = None
    evidence = f"{steps} step(s) with non-finite values, first at step {first}"
    if overflow and min(overflow) == first:
        evidence += " (the gradient norm)"
    if not grads.empty:
        row = grads.iloc[0]
        layer = str(row["layer"])
        evidence += f"; first NaN/Inf gradients in {layer} ({int(row['value'])} entries)"
    if (bad["kind"] == "nonfinite_loss").any():
        evidence += f"; loss from step {int(bad[bad.kind == 'nonfinite_loss'].step.min())}"
    return [
        Finding(
            "nonfinite",
            "error",
            "non-finite loss or gradients",
            evidence,
            first,
            last,
            layer,
            float(steps),
            0.0,
        )
    ]


# -- spikes --------------------------------------------------------------------------------------


def _clusters(steps: pd.Series, gap: int) -> list[tuple[int, int]]:
    """Group sorted steps into (start, end) runs no more than ``gap`` apart."""
    out: list[tuple[int, int]] = []
    for step in sorted(int(s) for s in steps.unique()):
        if out and step - out[-1][1] <= gap:
            out[-1] = (out[-1][0], step)
        else:
            out.append((step, step))
    return out


@rule("loss_spikes", "loss spikes are rare and the loss recovers", needs=("scalars",))
def loss_spikes(data: RunData, t: Thresholds) -> list[Finding]:
    events = data.events
    spikes = events[events["kind"] == "loss_spike"]
    if spikes.empty:
        return []
    clusters = _clusters(spikes["step"], t.spike_gap)
    loss = smooth(data.loss, 5)
    findings = []
    for start, end in clusters[:MAX_FINDINGS_PER_RULE]:
        part = spikes[(spikes.step >= start) & (spikes.step <= end)]
        peak = part.loc[part["ratio"].idxmax()]
        baseline = float(part.iloc[0]["baseline"])
        after = loss[
            (loss.index > end + t.loss_recovery_steps // 2)
            & (loss.index <= end + t.loss_recovery_steps)
        ]
        recovered = after.empty or float(after.min()) <= baseline * t.loss_recovery_ratio
        severity = "warning" if recovered else "error"
        evidence = (
            f"loss {peak['value']:.4g} at step {int(peak['step'])} = {_times(peak['ratio'])} its "
            f"baseline {baseline:.4g}; "
            + ("recovered" if recovered else "not recovered")
            + (f" within {t.loss_recovery_steps} steps" if not after.empty else " (run ended)")
        )
        findings.append(
            Finding(
                "loss_spikes",
                severity,
                "loss spike",
                evidence,
                start,
                end,
                None,
                float(peak["ratio"]),
                None,
            )
        )
    if len(clusters) > t.loss_spike_max_clusters:
        findings.append(
            Finding(
                "loss_spikes",
                "error",
                "repeated loss spikes",
                f"{len(clusters)} spike clusters (limit {t.loss_spike_max_clusters})",
                clusters[0][0],
                clusters[-1][1],
                None,
                float(len(clusters)),
                float(t.loss_spike_max_clusters),
            )
        )
    return findings


@rule("grad_spikes", "gradient-norm spikes (global and per layer) are rare", needs=("scalars",))
def grad_spikes(data: RunData, t: Thresholds) -> list[Finding]:
    events = data.events
    spikes = events[events["kind"].isin(["grad_spike", "layer_grad_spike"])]
    if spikes.empty:
        return []
    clusters = _clusters(spikes["step"], t.spike_gap)
    findings = []
    for start, end in clusters[:MAX_FINDINGS_PER_RULE]:
        part = spikes[(spikes.step >= start) & (spikes.step <= end)]
        layers = part[part.kind == "layer_grad_spike"].sort_values("ratio", ascending=False)
        top = layers.iloc[0] if not layers.empty else part.loc[part["ratio"].idxmax()]
        glob = part[part.kind == "grad_spike"]
        evidence = (
            f"global grad norm {_times(glob['ratio'].max())} baseline; " if not glob.empty else ""
        ) + (
            f"{layers['layer'].nunique()} layer(s) spiked, worst {top['layer']} "
            f"{top['value']:.3g} = {_times(top['ratio'])} its baseline {top['baseline']:.3g}"
            if not layers.empty
            else f"peak {top['value']:.3g} = {_times(top['ratio'])} baseline"
        )
        findings.append(
            Finding(
                "grad_spikes",
                "warning",
                "gradient-norm spike",
                evidence,
                start,
                end,
                str(top["layer"]) or None,
                float(top["ratio"]),
                None,
            )
        )
    if len(clusters) > t.grad_spike_max_clusters:
        findings.append(
            Finding(
                "grad_spikes",
                "error",
                "repeated gradient spikes",
                f"{len(clusters)} spike clusters (limit {t.grad_spike_max_clusters})",
                clusters[0][0],
                clusters[-1][1],
                None,
                float(len(clusters)),
                float(t.grad_spike_max_clusters),
            )
        )
    return findings


@rule("amp_skips", "few optimizer steps skipped by AMP's GradScaler", needs=("scalars",))
def amp_skips(data: RunData, t: Thresholds) -> list[Finding]:
    skipped = data.scalar("skipped")
    if skipped.empty:
        return []
    count = int((skipped > 0).sum())
    limit = max(t.amp_skip_min_count, t.amp_skip_max_fraction * len(skipped))
    if count <= limit:
        return []
    steps = skipped[skipped > 0].index
    return [
        Finding(
            "amp_skips",
            "warning",
            "many AMP-skipped steps",
            f"{count} of {len(skipped)} steps skipped (limit {limit:.0f})",
            int(steps.min()),
            int(steps.max()),
            None,
            float(count),
            float(limit),
        )
    ]


# -- layers --------------------------------------------------------------------------------------


def _relative_to_median(grad: pd.DataFrame) -> pd.DataFrame:
    median = grad.median(axis=1).replace(0.0, np.nan)
    return grad.div(median, axis=0)


@rule(
    "exploding_layers",
    "no tensor's gradient norm sustained far above the median tensor",
    needs=("layers",),
)
def exploding_layers(data: RunData, t: Thresholds) -> list[Finding]:
    grad = data.layer_metric("grad_norm")
    if grad.shape[1] < 3:
        return []
    window = data.last_window(_relative_to_median(grad), t.window_fraction)
    share = (window >= t.exploding_ratio).mean()
    findings = []
    for layer in share[share >= t.sustain_fraction].index[:MAX_FINDINGS_PER_RULE]:
        ratio = float(window[layer].median())
        findings.append(
            Finding(
                "exploding_layers",
                "error",
                "exploding layer gradient",
                f"{layer}: gradient norm {ratio:.3g}× the median tensor's over the last "
                f"{len(window)} steps (limit {t.exploding_ratio:g}×)",
                int(window.index.min()),
                int(window.index.max()),
                str(layer),
                ratio,
                t.exploding_ratio,
            )
        )
    return findings


@rule(
    "vanishing_layers",
    "every weight gets a gradient not far below the median tensor",
    needs=("layers",),
)
def vanishing_layers(data: RunData, t: Thresholds) -> list[Finding]:
    grad = data.layer_metric("grad_norm")
    if grad.empty:
        return []
    findings = []
    dead = [c for c in grad.columns if (grad[c] == 0).all()]
    for layer in dead[:MAX_FINDINGS_PER_RULE]:
        findings.append(
            Finding(
                "vanishing_layers",
                "warning",
                "tensor never received a gradient",
                f"{layer}: gradient norm 0 at all {len(grad)} steps (unused or detached)",
                int(grad.index.min()),
                int(grad.index.max()),
                str(layer),
                0.0,
                None,
            )
        )
    weights = [c for c in grad.columns if c not in dead and "bias" not in str(c)]
    if len(weights) >= 3:
        window = data.last_window(_relative_to_median(grad[weights]), t.window_fraction)
        share = (window <= t.vanishing_ratio).mean()
        for layer in share[share >= t.sustain_fraction].index[:MAX_FINDINGS_PER_RULE]:
            ratio = float(window[layer].median())
            findings.append(
                Finding(
                    "vanishing_layers",
                    "warning",
                    "vanishing layer gradient",
                    f"{layer}: gradient norm {ratio:.2g}× the median tensor's over the last "
                    f"{len(window)} steps (limit {t.vanishing_ratio:g}×)",
                    int(window.index.min()),
                    int(window.index.max()),
                    str(layer),
                    ratio,
                    t.vanishing_ratio,
                )
            )
    return findings


@rule("update_ratio", "update/parameter ratios ‖Δθ‖/‖θ‖ within range", needs=("layers",))
def update_ratio(data: RunData, t: Thresholds) -> list[Finding]:
    """Each layer's median over the last window of its own recorded steps: ‖Δθ‖/‖θ‖ is
    sampled (every ``param_every`` steps), and a second optimizer's layers count its steps."""
    every = every_of(data.sampling, "layers", "update_ratio")
    summary = data.layer_summary(data.layer_windows("update_ratio", t.window_fraction))
    median = summary["median"]
    findings = []
    for message, limit, out in (
        ("updates too large for the weights", t.update_ratio_max, median > t.update_ratio_max),
        ("weights barely move", t.update_ratio_min, median < t.update_ratio_min),
    ):
        for layer, row in summary[out].iterrows():
            value = float(row["median"])
            findings.append(
                Finding(
                    "update_ratio",
                    "warning",
                    message,
                    f"{layer}: median ‖Δθ‖/‖θ‖ {value:.3g} {_over(row, every)} (limit {limit:g})",
                    int(row["first"]),
                    int(row["last"]),
                    str(layer),
                    value,
                    limit,
                )
            )
    return findings[:MAX_FINDINGS_PER_RULE]


def _over(row: pd.Series, every: int) -> str:
    """``over the last 40 steps``, or for a sampled metric the steps its samples span."""
    count = int(row["count"])
    if every <= 1:
        return f"over the last {count} steps"
    first, last = int(row["first"]), int(row["last"])
    return f"over steps {first}–{last} ({count} samples, {every_label(every)})"


# -- loss trend ----------------------------------------------------------------------------------


@rule("loss_trend", "the loss decreases and does not diverge or stall", needs=("scalars",))
def loss_trend(data: RunData, t: Thresholds) -> list[Finding]:
    """The trend of the last training phase: a sweep or k-fold loop trains a new model from
    scratch at each ``meta.phases`` step (another optimizer took over), where the loss starts
    high again; that is no divergence."""
    loss = data.loss[np.isfinite(data.loss)]
    phases = [int(s) for s in data.run.meta.get("phases") or []]
    if not phases:
        return _loss_trend(loss, t)
    since = f" (the last training phase, from step {max(phases)})"
    return [
        replace(f, evidence=f.evidence + since)
        for f in _loss_trend(loss[loss.index >= max(phases)], t)
    ]


def _loss_trend(loss: pd.Series, t: Thresholds) -> list[Finding]:
    if len(loss) < t.min_steps_for_trend:
        return []
    window = max(5, len(loss) // 20)
    smoothed = smooth(loss, window)
    first, last = float(smoothed.iloc[0]), float(smoothed.iloc[-1])
    best_step = int(smoothed.idxmin())
    best = float(smoothed.min())
    end = int(loss.index.max())
    if best > 0 and last / best >= t.divergence_ratio:
        severity = "error" if last >= first else "warning"
        return [
            Finding(
                "loss_trend",
                severity,
                "loss diverged" if severity == "error" else "loss rose again",
                f"smoothed loss {last:.4g} at the end vs best {best:.4g} at step {best_step} "
                f"({_times(last / best)}, limit {t.divergence_ratio:g}×; start {first:.4g})",
                best_step,
                end,
                None,
                last / best,
                t.divergence_ratio,
            )
        ]
    if last >= first * (1 - t.plateau_fraction):
        return [
            Finding(
                "loss_trend",
                "warning",
                "loss did not decrease",
                f"smoothed loss {first:.4g} at the start, {last:.4g} at the end",
                int(loss.index.min()),
                end,
                None,
                last / first if first else None,
                None,
            )
        ]
    half = smoothed[smoothed.index >= smoothed.index[len(smoothed) // 2]]
    total, late = first - last, float(half.iloc[0]) - last
    if total > 0 and late < t.plateau_fraction * total:
        evidence = (
            f"the last half of the run improved the loss by {late:.3g} "
            f"({late / total:.1%} of the total {total:.3g})"
            if late > 0
            else f"the loss rose by {-late:.3g} over the last half of the run "
            f"(the whole run lowered it by {total:.3g})"
        )
        return [
            Finding(
                "loss_trend",
                "info",
                "loss plateaued",
                evidence,
                int(half.index.min()),
                end,
                None,
                late / total,
                t.plateau_fraction,
            )
        ]
    return []


# -- probes (rules run only when the probe's table exists) ---------------------------------------


def _probe_metric(data: RunData, table: str, metric: str) -> pd.Series:
    df = data.table(table)
    if df.empty or "metric" not in df:
        return pd.Series(dtype=float)
    part = df[df["metric"] == metric]
    if "layer" in part:
        part = part[part["layer"].fillna("") == ""]
    if "index" in part:
        part = part[part["index"] == 0]
    return part.groupby("step")["value"].last().dropna()


@rule("edge_of_stability", "sharpness stays below 2/lr (edge of stability)", needs=("hessian",))
def edge_of_stability(data: RunData, t: Thresholds) -> list[Finding]:
    ratio = _probe_metric(data, "hessian", "eos_ratio")
    over = ratio[ratio >= t.eos_ratio]
    if over.empty:
        return []
    sharp = _probe_metric(data, "hessian", "top_eigenvalue")
    step = int(over.idxmax())
    return [
        Finding(
            "edge_of_stability",
            "warning",
            "sharpness at the edge of stability",
            f"λmax·lr/2 reached {over.max():.3g} at step {step} "
            f"(λmax {sharp.get(step, np.nan):.4g}); "
            f"{len(over)} of {len(ratio)} probes at or above {t.eos_ratio:g}",
            int(over.index.min()),
            int(over.index.max()),
            None,
            float(over.max()),
            t.eos_ratio,
        )
    ]


@rule(
    "softmax_collapse",
    "few samples have a saturated softmax in the training dtype",
    needs=("softmax",),
)
def softmax_collapse(data: RunData, t: Thresholds) -> list[Finding]:
    fraction = _probe_metric(data, "softmax", "saturated_fraction")
    over = fraction[fraction >= t.softmax_collapse_fraction]
    if len(over) < t.softmax_collapse_min_steps:
        return []  # a single saturated step (e.g. right after a spike) is not a regime
    first = int(over.index.min())
    every = every_of(data.sampling, "softmax", "saturated_fraction")
    recorded = "steps" if every <= 1 else f"recorded steps ({every_label(every)})"
    return [
        Finding(
            "softmax_collapse",
            "warning",
            "softmax collapse",
            f"{fraction.max():.1%} of samples saturated (softmax exactly one-hot, zero "
            f"gradient) at peak; above {t.softmax_collapse_fraction:.0%} in {len(over)} of "
            f"{len(fraction)} {recorded}, from step {first}",
            first,
            int(over.index.max()),
            None,
            float(fraction.max()),
            t.softmax_collapse_fraction,
        )
    ]


@rule(
    "neural_collapse_regression",
    "class separation (CDNV) does not regress after its best",
    needs=("collapse",),
)
def neural_collapse_regression(data: RunData, t: Thresholds) -> list[Finding]:
    # CDNV, not NC1: NC1's pseudo-inverse of Σ_B is dominated by the smallest between-class
    # directions and can rise while every class pair separates (weight decay shrinking the
    # features); CDNV compares each pair of classes without an inverse (Galanti et al. 2022).
    cdnv = _probe_metric(data, "collapse", "cdnv")
    if len(cdnv) < 2:
        return []
    best_step, best, last = int(cdnv.idxmin()), float(cdnv.min()), float(cdnv.iloc[-1])
    if best <= 0 or last / best < t.nc_regression_ratio:
        return []
    return [
        Finding(
            "neural_collapse_regression",
            "warning",
            "neural collapse regressed",
            f"CDNV {last:.4g} at the last probe vs best {best:.4g} at step {best_step} "
            f"({_times(last / best)}, limit {t.nc_regression_ratio:g}×): class means are "
            "losing their separation relative to the within-class spread",
            best_step,
            int(cdnv.index.max()),
            None,
            last / best,
            t.nc_regression_ratio,
        )
    ]


# -- evaluation ----------------------------------------------------------------------------------


def _evaluates(data: RunData) -> bool:
    return data.evaluation is not None


@rule(
    "overfitting",
    "the eval loss does not rise while the training loss falls",
    needs=("scalars",),
    applies=_evaluates,
)
def overfitting(data: RunData, t: Thresholds) -> list[Finding]:
    """Per loader: the eval loss of each of the last ``overfit_last_evals`` evaluations is
    above its best (an earlier evaluation) by more than ``overfit_rise_fraction`` of the best
    and by more than ``overfit_noise_multiple`` eval-noise stds, while the training loss at the
    last evaluation is below the one at the best by ``overfit_train_fall_fraction``."""
    evaluation = data.evaluation
    if evaluation is None:
        return []
    findings = []
    for loader in evaluation.loaders:
        finite = np.isfinite(loader.eval_loss)
        loss, steps = loader.eval_loss[finite], loader.steps[finite]
        train = loader.train_loss[finite]
        k = max(1, t.overfit_last_evals)
        if len(loss) < max(t.overfit_min_evals, k + 1):
            continue
        best_at = int(np.argmin(loss))
        best = float(loss[best_at])
        if best_at >= len(loss) - k or best <= 0:
            continue  # the best is among the last k: nothing rose after it yet
        rise = float(loss[-k:].min()) - best
        noise = eval_noise(loss)
        bar = max(t.overfit_rise_fraction * best, t.overfit_noise_multiple * noise)
        train_best, train_last = float(train[best_at]), float(train[-1])
        falling = train_last < train_best * (1 - t.overfit_train_fall_fraction)
        if not (rise > bar and np.isfinite(bar) and falling):
            continue
        where = f" (loader {loader.index})" if len(evaluation.loaders) > 1 else ""
        findings.append(
            Finding(
                "overfitting",
                "warning",
                "eval loss rising while the training loss falls" + where,
                f"eval loss {float(loss[-1]):.4g} at step {int(steps[-1])} vs best {best:.4g} "
                f"at step {int(steps[best_at])}: the last {k} evaluations are all ≥ "
                f"{best + rise:.4g} (+{rise / best:.1%}; bar: "
                f"{t.overfit_rise_fraction:.0%} of the best and {t.overfit_noise_multiple:g}× "
                f"the eval noise {noise:.3g}); training loss {train_best:.4g} → {train_last:.4g}",
                int(steps[best_at]),
                int(steps[-1]),
                None,
                (best + rise) / best,
                1 + t.overfit_rise_fraction,
            )
        )
    return findings
