"""Report sections as (label, value) rows: the run's evaluations and the metrics its script
logged (``build.RUN_SECTIONS``), then the latest numbers of each probe table
(``build.PROBE_SECTIONS``). Each reads only its table (no torch).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from gradlens.report.build import PROBE_SECTIONS, RUN_SECTIONS, Section
from gradlens.report.data import RunData
from gradlens.report.evaluation import EVAL_DEFINITIONS, LoaderEvaluation
from gradlens.report.format import number, sparkline

__all__ = [
    "LOGGED_SHOWN",
    "collapse_section",
    "evaluation_section",
    "hessian_section",
    "landscape_section",
    "logged_section",
    "softmax_section",
]

LOGGED_SHOWN = 20  # metrics of the script's own listed in the report (the rest counted)


def _latest(df: pd.DataFrame) -> tuple[int, pd.DataFrame]:
    step = int(df["step"].max())
    return step, df[df["step"] == step]


def _value(frame: pd.DataFrame, metric: str, index: int = 0) -> float:
    rows = frame[(frame["metric"] == metric) & (frame.get("index", 0) == index)]
    if "layer" in rows:
        rows = rows[rows["layer"].fillna("") == ""]
    return float(rows["value"].iloc[-1]) if len(rows) else math.nan


def evaluation_section(data: RunData) -> Section | None:
    """Best and last eval loss/accuracy per loader, and the generalization gap over time."""
    evaluation = data.evaluation
    if evaluation is None:
        return None
    steps = evaluation.steps
    many = len(evaluation.loaders) > 1
    span = f"steps {int(steps[0])}–{int(steps[-1])}" if len(steps) > 1 else f"step {steps[0]}"
    rows = [
        (
            "evaluations",
            f"{len(steps)} ({span})"
            + (f", loaders {', '.join(str(x.index) for x in evaluation.loaders)}" if many else ""),
        )
    ]
    for loader in evaluation.loaders:
        rows += _loader_rows(loader, f" (loader {loader.index})" if many else "")
    rows.append(
        (
            "gap, defined",
            f"{EVAL_DEFINITIONS['generalization_gap']}; training loss at an evaluation = "
            f"{EVAL_DEFINITIONS['train_loss_at_eval']}",
        )
    )
    return Section("Evaluation", rows)


def _loader_rows(loader: LoaderEvaluation, suffix: str) -> list[tuple[str, str]]:
    best, best_step = loader.best_loss
    rows = [
        (
            f"eval loss: best · last{suffix}",
            f"{number(best)} (step {best_step}) · {number(loader.last_loss)} "
            f"(step {loader.last_step})"
            if best is not None
            else "non-finite",
        )
    ]
    if loader.has_accuracy:
        acc, acc_step = loader.best_accuracy
        last = loader.last_accuracy
        rows.append(
            (
                f"eval accuracy: best · last{suffix}",
                f"{acc:.2%} (step {acc_step}) · " + (f"{last:.2%}" if last is not None else "-"),
            )
        )
    gap = loader.gap
    finite = gap[np.isfinite(gap)]
    if finite.size:
        trend = f"{number(float(finite[0]))} → {number(float(finite[-1]))}"
        if finite.size > 2:
            trend += f", max {number(float(finite.max()))}"
        rows.append(
            (
                f"generalization gap (eval − train loss){suffix}",
                f"{sparkline([float(v) for v in gap[-60:]])} {trend}",
            )
        )
    if loader.samples is not None:
        rows.append((f"samples per evaluation{suffix}", f"{loader.samples:,.0f}"))
    return rows


def logged_section(data: RunData) -> Section | None:
    """The last value of each metric the script logged itself (``gradlens.log``)."""
    user = data.user
    if user.empty:
        return None
    rows = []
    metrics = list(dict.fromkeys(user["metric"].astype(str)))
    for metric in metrics[:LOGGED_SHOWN]:
        series = user[user["metric"] == metric].groupby("step")["value"].last()
        rows.append(
            (
                metric,
                f"{number(float(series.iloc[-1]))} at step {int(series.index[-1])} "
                f"({len(series)} value{'s' if len(series) != 1 else ''})",
            )
        )
    if len(metrics) > LOGGED_SHOWN:
        rows.append(("…", f"and {len(metrics) - LOGGED_SHOWN} more metrics"))
    return Section("Logged by the script (last values)", rows)


def hessian_section(data: RunData) -> Section | None:
    df = data.table("hessian")
    if df.empty:
        return None
    step, last = _latest(df)
    top = last[(last["metric"] == "top_eigenvalue") & (last["layer"].fillna("") == "")]
    res = last[(last["metric"] == "top_residual") & (last["layer"].fillna("") == "")]
    eigs = ", ".join(number(v) for v in top.sort_values("index")["value"])
    worst = float(res["value"].max()) if len(res) else math.nan
    sharp = df[df["metric"] == "sharpness"].groupby("step")["value"].last()
    eos = df[df["metric"] == "eos_ratio"].groupby("step")["value"].last()
    first = int(df["step"].min())
    rows = [
        (
            "probes",
            f"{df['step'].nunique()} (steps {first}–{step})"
            if first != step
            else f"1 (step {step})",
        ),
        (f"top eigenvalues at step {step}", eigs or "-"),
        ("largest residual ‖Hv−λv‖", number(worst)),
        (
            "λmin (same Krylov space)",
            f"{number(_value(last, 'lambda_min'))} "
            f"(residual {number(_value(last, 'lambda_min_residual'))})",
        ),
        ("trace", _trace_text(last)),
        (
            "sharpness: first → max → last" if len(sharp) > 1 else "sharpness",
            f"{number(sharp.iloc[0])} → {number(sharp.max())} → {number(sharp.iloc[-1])}"
            if len(sharp) > 1
            else (number(sharp.iloc[0]) if len(sharp) else "-"),
        ),
        ("λmax·lr/2 (edge of stability at 1)", f"max {number(eos.max())}" if len(eos) else "-"),
        ("HVPs per probe", number(_value(last, "hvps"))),
    ]
    engine = _engine_text(last)
    if engine:
        rows.append(("HVP engine", engine))
    return Section("Hessian", rows)


def _trace_text(last: pd.DataFrame) -> str:
    text = f"{number(_value(last, 'trace'))} ± {number(_value(last, 'trace_stderr'))}"
    if _value(last, "trace_reached") == 0:
        text += " (the HVP budget could not reach the requested error)"
    return text


def _engine_text(last: pd.DataFrame) -> str:
    """The engine the probe chose and its finite-difference check, when it recorded them."""
    rows = last[last["metric"] == "hvp_engine"]
    if rows.empty:
        return ""
    text = str(rows["layer"].iloc[-1])
    error = last[last["metric"] == "fd_check_error"]["value"]
    if len(error):
        passed = _value(last, "fd_check_passed") == 1
        verdict = "passed" if passed else "failed, not used"
        text += f"; finite differences {verdict} (rel. error {number(float(error.iloc[-1]))})"
    return text


def _series(df: pd.DataFrame, metric: str) -> pd.Series:
    part = df[df["metric"] == metric]
    if "layer" in part:
        part = part[part["layer"].fillna("") == ""]
    return part.groupby("step")["value"].last().dropna()


def _trend(series: pd.Series, fmt: str = "{:.4g}") -> str:
    """``first → last (steps a–b)``; one value prints as ``value (step a)``."""
    if series.empty:
        return "-"
    if len(series) == 1:
        return f"{fmt.format(series.iloc[0])} (step {int(series.index[0])})"
    return (
        f"{fmt.format(series.iloc[0])} → {fmt.format(series.iloc[-1])} "
        f"(steps {int(series.index[0])}–{int(series.index[-1])})"
    )


def collapse_section(data: RunData) -> Section | None:
    df = data.table("collapse")
    if df.empty:
        return None
    labels = {
        "nc1": "NC1 within/between variability",
        "cdnv": "CDNV",
        "nc2_equinorm": "NC2 equinorm",
        "nc2_equiangular": "NC2 equiangularity",
        "nc2_etf_distance": "NC2 distance to a simplex ETF",
        "nc3": "NC3 self-duality",
        "nc4": "NC4 disagreement with nearest class centre",
    }
    rows = [
        (label, _trend(_series(df, metric)))
        for metric, label in labels.items()
        if (df["metric"] == metric).any()
    ]
    probes = df["step"].nunique()
    return Section("Neural collapse" + (" (first → last probe)" if probes > 1 else ""), rows)


def softmax_section(data: RunData) -> Section | None:
    df = data.table("softmax")
    if df.empty:
        return None
    saturated = _series(df, "saturated_fraction")
    rows = []
    if len(saturated):
        peak = int(saturated.idxmax())
        rows.append(
            (
                "saturated samples (softmax exactly one-hot)",
                f"{saturated.iloc[-1]:.1%} at the end, peak {saturated.max():.1%} at step {peak}",
            )
        )
    for metric, label, fmt in (
        ("zero_loss_fraction", "samples with loss exactly 0", "{:.1%}"),
        ("max_logit_gap", "max logit gap (top-1 − top-2)", "{:.4g}"),
        ("log_z_drift", "log Z drift since the first step", "{:.4g}"),
        ("logit_norm_growth", "logit norm growth", "{:.3g}×"),
        ("ghost_r", "ghosts-of-softmax r = ‖Δθ‖/ρ (collapse from 1)", "{:.3g}"),
    ):
        series = _series(df, metric)
        if len(series):
            rows.append((label, _trend(series, fmt)))
    cos = df[(df["metric"] == "grad_weight_cos") & (df["layer"].fillna("") == "")]
    if len(cos):
        series = cos.groupby("step")["value"].last()
        rows.append(("cos(gradient, weights), all parameters", _trend(series, "{:+.3f}")))
    return Section("Softmax collapse", rows) if rows else None


def landscape_section(data: RunData) -> Section | None:
    df = data.table("landscape")
    if df.empty:
        return None
    step, last = _latest(df)
    rows = [("slices", f"{df.groupby(['step', 'slice']).ngroups} (latest at step {step})")]
    for name, part in last.groupby("slice"):
        summary = part[part["alpha"].isna()]
        values = dict(zip(summary["metric"], summary["value"], strict=False))
        centre = part[
            (part["metric"] == "loss") & (part["alpha"] == 0) & (part["beta"].fillna(0) == 0)
        ]
        curv = ", ".join(
            f"{k.removeprefix('curvature_')} {number(v)}"
            for k, v in values.items()
            if k.startswith("curvature_")
        )
        rows.append(
            (
                str(name),
                f"centre loss {number(float(centre['value'].iloc[0])) if len(centre) else '-'}, "
                f"roughness {number(values.get('roughness'))}, curvature {curv or '-'}"
                + (
                    f", check error {number(values['check_error'])}"
                    if "check_error" in values
                    else ""
                ),
            )
        )
    return Section("Loss landscape", rows)


RUN_SECTIONS += [evaluation_section, logged_section]
PROBE_SECTIONS["hessian"] = hessian_section
PROBE_SECTIONS["collapse"] = collapse_section
PROBE_SECTIONS["softmax"] = softmax_section
PROBE_SECTIONS["landscape"] = landscape_section
