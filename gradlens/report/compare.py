"""``gradlens compare``: runs side by side, and per-layer norm differences at matched steps."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from gradlens.report.build import Report, build_report, exit_code
from gradlens.report.config import ReportConfig
from gradlens.report.data import RunData
from gradlens.report.evaluation import EVAL_DEFINITIONS
from gradlens.report.format import loss_value, number
from gradlens.report.render_json import _clean
from gradlens.report.render_junit import junit_suite
from gradlens.report.render_markdown import _cell
from gradlens.report.render_text import STATUS_STYLE, health_renderable
from gradlens.report.summary import DEFINITIONS
from gradlens.store import Run

__all__ = ["COMPARE_SCHEMA_ID", "Comparison", "compare_runs", "compare_schema", "render_compare"]

TOP_LAYERS = 10
COMPARE_SCHEMA_ID = "https://gradlens.dev/schemas/compare-1.json"


@dataclass
class Comparison:
    rows: list[dict[str, Any]]  # one per run
    layer_diffs: list[dict[str, Any]]  # per (run, layer): median ratio to the first run
    reports: list[Report]

    @property
    def exit_code(self) -> int:
        return max(exit_code(r) for r in self.reports)


def compare_runs(
    runs: list[Run], config: ReportConfig | None = None, reports: list[Report] | None = None
) -> Comparison:
    """Compare ``runs`` against the first one (``reports``: theirs, when already built)."""
    if len(runs) < 2:
        raise ValueError("compare needs at least two runs")
    config = config or ReportConfig()
    data = [RunData(r) for r in runs]
    if reports is None:
        reports = [build_report(r, config) for r in runs]
    labels = _labels(reports)
    rows = [_row(rep, label) for rep, label in zip(reports, labels, strict=True)]
    diffs = []
    for other, label in zip(data[1:], labels[1:], strict=True):
        diffs += _layer_diffs(data[0], other, labels[0], label)
    return Comparison(rows, diffs, reports)


def _labels(reports: list[Report]) -> list[str]:
    """Each run's folder name (as ``ls`` lists it and ``report NAME`` takes it); its path
    where two of the runs share a folder name (``a/mlp``, ``b/mlp``)."""
    paths = [rep.summary.path for rep in reports]
    names = [Path(path).name for path in paths]
    return [
        path if names.count(name) > 1 else name for path, name in zip(paths, names, strict=True)
    ]


def _row(report: Report, label: str) -> dict[str, Any]:
    """One run's numbers, as ``report``, ``ls`` and ``watch`` define them (report.summary),
    and its first eval loader's (report.evaluation; None without eval rows)."""
    summary = report.summary
    loaders = (report.evaluation or {}).get("loaders") or [{}]
    first = loaders[0]
    return {
        "run": label,
        "path": report.run.get("path"),
        "status": summary.status,
        "steps": summary.steps,
        "final_loss": summary.final_loss,
        "best_loss": summary.best_loss,
        "loss_spike_steps": summary.loss_spike_steps,
        "grad_spike_steps": summary.grad_spike_steps,
        "nonfinite_steps": summary.nonfinite_steps,
        "best_eval_loss": first.get("best_loss"),
        "last_eval_loss": first.get("last_loss"),
        "best_eval_accuracy": first.get("best_accuracy"),
        "last_eval_accuracy": first.get("last_accuracy"),
        **{f"{k}s": v for k, v in (summary.counts or {}).items()},
        "health": summary.health,
    }


def _layer_diffs(
    base: RunData, other: RunData, base_label: str, label: str
) -> list[dict[str, Any]]:
    """Per layer: ratio other/base at matched steps — over the last 20% and at its extreme."""
    out = []
    for metric in ("grad_norm", "param_norm"):
        a, b = base.layer_metric(metric), other.layer_metric(metric)
        layers = [c for c in a.columns if c in b.columns]
        steps = a.index.intersection(b.index)
        if not layers or steps.empty:
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = b.loc[steps, layers].astype(float) / a.loc[steps, layers].astype(float)
            ratio = ratio.replace([np.inf, -np.inf], np.nan)
            final = base.last_window(ratio, 0.2).median()
            distance = np.log(ratio.abs()).abs()
            order = np.log(final.abs()).abs().sort_values(ascending=False).index[:TOP_LAYERS]
        for layer in order:
            column = distance[layer].dropna()
            worst = int(column.idxmax()) if len(column) else None
            out.append(
                {
                    "run": label,
                    "baseline": base_label,
                    "metric": metric,
                    "layer": str(layer),
                    "final_ratio": float(final[layer]),
                    "max_ratio": float(ratio.loc[worst, layer]) if worst is not None else None,
                    "max_step": worst,
                    "matched_steps": len(steps),
                }
            )
    return out


def compare_schema() -> dict[str, Any]:
    """The JSON schema (draft 2020-12) of ``render_compare(..., "json")``."""
    text = resources.files("gradlens.report").joinpath("compare.schema.json").read_text()
    return dict(json.loads(text))


def render_compare(comparison: Comparison, fmt: str) -> str | RenderableType:
    """``text`` returns a rich renderable; the other formats a string."""
    if fmt == "json":
        return (
            json.dumps(
                _clean(
                    {
                        "schema": COMPARE_SCHEMA_ID,
                        "schema_version": 1,
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
    baseline = comparison.rows[0]["run"]
    diff_cols = ["run", "metric", "layer", "last 20%", "extreme", "at step"]
    diff_cells: list[list[str]] = [
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
        return _markdown(comparison, diff_cols, diff_cells)
    runs = Table(title="Runs (the first is the baseline)", title_justify="left")
    runs.add_column("")
    for row in comparison.rows:
        runs.add_column(Text(row["run"]), overflow="fold")
    for label, texts in _run_lines(comparison):
        runs.add_row(Text(label, "bold"), *texts)
    parts: list[RenderableType] = [runs]
    if diff_cells:
        diffs = Table(
            title=Text(
                f"Per-layer norm ratios to {baseline} at matched steps (median over the last "
                "20%, and the most extreme)"
            ),
            title_justify="left",
        )
        for c in diff_cols:
            diffs.add_column(c, overflow="fold")
        for cells in diff_cells:
            diffs.add_row(*(Text(cell) for cell in cells))
        parts += [Text(), diffs]
    return Group(*parts)


def _run_lines(comparison: Comparison) -> list[tuple[str, list[Text]]]:
    """The runs table, one line per number (runs are columns: it fits 80 columns)."""
    rows, reports = comparison.rows, comparison.reports
    return [*_main_lines(rows), *_eval_lines(rows), _findings_line(reports)]


def _main_lines(rows: list[dict[str, Any]]) -> list[tuple[str, list[Text]]]:
    return [
        ("status", [Text(r["status"], STATUS_STYLE.get(r["status"], "")) for r in rows]),
        ("steps", [Text(str(r["steps"])) for r in rows]),
        (
            f"final loss ({DEFINITIONS['final_loss']})",
            [Text(loss_value(r["final_loss"])) for r in rows],
        ),
        (f"best loss ({DEFINITIONS['best_loss']})", [Text(_fmt(r["best_loss"])) for r in rows]),
        (
            "steps with a spike: loss, gradient",
            [Text(f"{r['loss_spike_steps']}, {r['grad_spike_steps']}") for r in rows],
        ),
        ("non-finite steps", [Text(str(r["nonfinite_steps"])) for r in rows]),
    ]


def _findings_line(reports: list[Report]) -> tuple[str, list[Text]]:
    return ("findings", [health_renderable(rep.summary) for rep in reports])


EVAL_LINES = (
    ("best_eval_loss", f"best eval loss ({EVAL_DEFINITIONS['best_eval_loss']}; first loader)"),
    ("last_eval_loss", "last eval loss"),
    ("best_eval_accuracy", "best eval accuracy"),
    ("last_eval_accuracy", "last eval accuracy"),
)


def _eval_lines(rows: list[dict[str, Any]]) -> list[tuple[str, list[Text]]]:
    """The evaluation lines, only those some compared run has a number for."""
    out: list[tuple[str, list[Text]]] = []
    for key, label in EVAL_LINES:
        if any(r[key] is not None for r in rows):
            percent = "accuracy" in key
            out.append((label, [Text(_eval_text(r[key], percent)) for r in rows]))
    return out


def _eval_text(value: float | None, percent: bool) -> str:
    if value is None:
        return "-"
    return f"{value:.2%}" if percent else number(value)


def _markdown(comparison: Comparison, diff_cols: list[str], diff_cells: list[list[str]]) -> str:
    shown = [
        (key, label)
        for key, label in EVAL_LINES
        if any(r[key] is not None for r in comparison.rows)
    ]
    columns = [
        "run",
        "status",
        "steps",
        f"final loss ({DEFINITIONS['final_loss']})",
        f"best loss ({DEFINITIONS['best_loss']})",
        "steps with a spike: loss, gradient",
        "non-finite steps",
        *(label for _, label in shown),
        "findings",
    ]
    cells = [
        [
            _cell(r["run"]),
            r["status"],
            str(r["steps"]),
            loss_value(r["final_loss"]),
            _fmt(r["best_loss"]),
            f"{r['loss_spike_steps']}, {r['grad_spike_steps']}",
            str(r["nonfinite_steps"]),
            *(_eval_text(r[key], "accuracy" in key) for key, _ in shown),
            r["health"],
        ]
        for r in comparison.rows
    ]
    lines = ["## gradlens compare", "", "| " + " | ".join(columns) + " |"]
    lines.append("|" + "---|" * len(columns))
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    if diff_cells:
        baseline = comparison.rows[0]["run"]
        lines += [
            "",
            f"### Per-layer norm ratios to {_cell(baseline)} at matched steps",
            "",
            "| " + " | ".join(diff_cols) + " |",
            "|" + "---|" * len(diff_cols),
        ]
        lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in diff_cells]
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return number(value)
    return "-" if value is None else str(value)
