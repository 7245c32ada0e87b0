"""Report sections for probe tables: the latest numbers of each probe, as (label, value) rows.

Registered in ``build.PROBE_SECTIONS``; each reads only its table (no torch).
"""

from __future__ import annotations

import math

import pandas as pd

from gradlens.report.build import PROBE_SECTIONS, Section
from gradlens.report.data import RunData
from gradlens.report.format import number

__all__ = ["hessian_section"]


def _latest(df: pd.DataFrame) -> tuple[int, pd.DataFrame]:
    step = int(df["step"].max())
    return step, df[df["step"] == step]


def _value(frame: pd.DataFrame, metric: str, index: int = 0) -> float:
    rows = frame[(frame["metric"] == metric) & (frame.get("index", 0) == index)]
    if "layer" in rows:
        rows = rows[rows["layer"].fillna("") == ""]
    return float(rows["value"].iloc[-1]) if len(rows) else math.nan


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
    rows = [
        ("probes", f"{df['step'].nunique()} (steps {int(df['step'].min())}–{step})"),
        (f"top eigenvalues at step {step}", eigs or "-"),
        ("largest residual ‖Hv−λv‖", number(worst)),
        (
            "λmin (same Krylov space)",
            f"{number(_value(last, 'lambda_min'))} "
            f"(residual {number(_value(last, 'lambda_min_residual'))})",
        ),
        ("trace", f"{number(_value(last, 'trace'))} ± {number(_value(last, 'trace_stderr'))}"),
        (
            "sharpness: first → max → last",
            f"{number(sharp.iloc[0])} → {number(sharp.max())} → {number(sharp.iloc[-1])}"
            if len(sharp)
            else "-",
        ),
        ("λmax·lr/2 (edge of stability at 1)", f"max {number(eos.max())}" if len(eos) else "-"),
        ("HVPs per probe", number(_value(last, "hvps"))),
    ]
    return Section("Hessian", rows)


PROBE_SECTIONS["hessian"] = hessian_section
