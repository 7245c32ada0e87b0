"""``gradlens compare``: runs side by side, and per-layer norm differences at matched steps."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

import numpy as np
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from gradlens.report.build import Report, build_report, exit_code
from gradlens.report.config import ReportConfig
from gradlens.report.data import RunData
from gradlens.report.format import number
from gradlens.report.render_json import _clean
from gradlens.report.render_junit import junit_suite
from gradlens.store import Run

__all__ = ["Comparison", "compare_runs", "render_compare"]

TOP_LAYERS = 10


@dataclass
class Comparison:
    rows: list[dict[str, Any]]  # one per run
    layer_diffs: list[dict[str, Any]]  # per (run, layer): median ratio to the first run
    reports: list[Report]

    @property
    def exit_code(self) -> int:
        return max(exit_code(r) for r in self.reports)


def compare_runs(runs: list[Run], config: ReportConfig | None = None) -> Comparison:
    """Compare ``runs`` against the first one."""
    if len(runs) < 2:
        raise ValueError("compare needs at least two runs")
    config = config or ReportConfig()
    data = [RunData(r) for r in runs]
    reports = [build_report(r, config) for r in runs]
    rows = [_row(d, rep) for d, rep in zip(data, reports, strict=True)]
    diffs = []
    base = data[0]
    for other in data[1:]:
        diffs += _layer_diffs(base, other)
    return Comparison(rows, diffs, reports)


def _row(data: RunData, report: Report) -> dict[str, Any]:
    loss = data.loss[np.isfinite(data.loss)]
    tail = loss.iloc[-max(1, len(loss) // 20) :] if len(loss) else loss
    kinds = data.events["kind"].value_counts() if not data.events.empty else {}
    return {
        "run": data.run.name,
        "status": data.run.status,
        "steps": data.run.steps,
        "final_loss": float(tail.mean()) if len(tail) else None,
        "best_loss": float(loss.min()) if len(loss) else None,
        "loss_spikes": int(kinds.get("loss_spike", 0)),
        "grad_spikes": int(kinds.get("grad_spike", 0)) + int(kinds.get("layer_grad_spike", 0)),
        "nonfinite_steps": int(
            data.events[data.events["kind"].str.startswith("nonfinite")]["step"].nunique()
        )
        if not data.events.empty
        else 0,
        **{f"{k}s": v for k, v in report.counts().items()},
    }


def _layer_diffs(base: RunData, other: RunData) -> list[dict[str, Any]]:
    """Per layer: ratio other/base at matched steps — over the last 20% and at its extreme."""
    out = []
    for metric in ("grad_norm", "param_norm"):
        a, b = base.layer_metric(metric), other.layer_metric(metric)
        layers = [c for c in a.columns if c in b.columns]
        steps = a.index.intersection(b.index)
        if not layers or steps.empty:
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = b.loc[steps, layers] / a.loc[steps, layers]
        ratio = ratio.replace([np.inf, -np.inf], np.nan)
        final = base.last_window(ratio, 0.2).median()
        distance = np.log(ratio.abs()).abs()
        for layer in np.log(final.abs()).abs().sort_values(ascending=False).index[:TOP_LAYERS]:
            column = distance[layer].dropna()
            worst = int(column.idxmax()) if len(column) else None
            out.append(
                {
                    "run": other.run.name,
                    "baseline": base.run.name,
                    "metric": metric,
                    "layer": str(layer),
                    "final_ratio": float(final[layer]),
                    "max_ratio": float(ratio.loc[worst, layer]) if worst is not None else None,
                    "max_step": worst,
                    "matched_steps": len(steps),
                }
            )
    return out


def render_compare(comparison: Comparison, fmt: str) -> str | RenderableType:
    """``text`` returns a rich renderable; the other formats a string."""
    if fmt == "json":
        return (
            json.dumps(
                _clean(
                    {
                        "schema": "https://gradlens.dev/schemas/compare-1.json",
                        "runs": comparison.rows,
                        "layer_differences": comparison.layer_diffs,
                        "exit_code": comparison.exit_code,
                    }
                ),
                indent=2,
            )
            + "\n"
        )
    if fmt == "junit":
        root = ET.Element("testsuites", name="gradlens-compare")
        for report in comparison.reports:
            root.append(junit_suite(report))
        ET.indent(root)
        return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
    columns = [
        "run",
        "status",
        "steps",
        "final loss",
        "best loss",
        "spikes loss/grad",
        "non-finite steps",
        "errors/warnings",
    ]
    cell = [
        [
            r["run"],
            r["status"],
            str(r["steps"]),
            _fmt(r["final_loss"]),
            _fmt(r["best_loss"]),
            f"{r['loss_spikes']}/{r['grad_spikes']}",
            str(r["nonfinite_steps"]),
            f"{r['errors']}/{r['warnings']}",
        ]
        for r in comparison.rows
    ]
    diff_cols = ["run", "metric", "layer", "last 20%", "extreme", "at step"]
    diff_cells = [
        [
            d["run"],
            d["metric"],
            d["layer"],
            _fmt(d["final_ratio"]),
            _fmt(d["max_ratio"]),
            _fmt(d["max_step"]),
        ]
        for d in comparison.layer_diffs
    ]
    if fmt == "markdown":
        lines = [
            "## gradlens compare",
            "",
            "| " + " | ".join(columns) + " |",
            "|" + "---|" * len(columns),
        ]
        lines += ["| " + " | ".join(row) + " |" for row in cell]
        if diff_cells:
            baseline = comparison.rows[0]["run"]
            lines += [
                "",
                f"### Per-layer norm ratios to `{baseline}` at matched steps",
                "",
                "| " + " | ".join(diff_cols) + " |",
                "|" + "---|" * len(diff_cols),
            ]
            lines += ["| " + " | ".join(row) + " |" for row in diff_cells]
        return "\n".join(lines) + "\n"
    runs = Table(title="Runs", title_justify="left")
    for c in columns:
        runs.add_column(c, justify="right" if c not in ("run", "status") else "left")
    for row in cell:
        runs.add_row(*row)
    parts: list[RenderableType] = [runs]
    if diff_cells:
        baseline = comparison.rows[0]["run"]
        diffs = Table(
            title=f"Per-layer norm ratios to {baseline} at matched steps (median "
            "over the last 20%, and the most extreme)",
            title_justify="left",
        )
        for c in diff_cols:
            diffs.add_column(c)
        for row in diff_cells:
            diffs.add_row(*row)
        parts += [Text(), diffs]
    return Group(*parts)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return number(value)
    return "-" if value is None else str(value)
