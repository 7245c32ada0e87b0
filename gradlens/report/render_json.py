"""JSON output, versioned; its schema is ``gradlens/report/report.schema.json``."""

from __future__ import annotations

import json
import math
from importlib import resources
from typing import Any

from gradlens.report.build import Report, exit_code

__all__ = ["SCHEMA_ID", "render_json", "report_dict", "schema"]

SCHEMA_ID = "https://gradlens.dev/schemas/report-1.json"
SCHEMA_VERSION = 1


def _clean(value: Any) -> Any:
    """NaN/Inf are not JSON: they become null (the text says so)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def report_dict(report: Report) -> dict[str, Any]:
    return _clean(
        {
            "schema": SCHEMA_ID,
            "schema_version": SCHEMA_VERSION,
            "run": report.run,
            "fail_on": report.fail_on,
            "exit_code": exit_code(report),
            "counts": report.counts(),
            "findings": [f.to_dict() for f in report.findings],
            "rules": [
                {
                    "rule": r.rule,
                    "description": r.description,
                    "status": r.status,
                    "findings": len(r.findings),
                }
                for r in report.rules
            ],
            "loss_curve": report.loss,
            "layers": {
                k: [{"layer": n, "value": v} for n, v in items]
                for k, items in report.layers.items()
            },
            "sections": [
                {"title": s.title, "rows": [{"label": a, "value": b} for a, b in s.rows]}
                for s in report.sections
            ],
            "evaluation": report.evaluation,
            "sampling": report.sampling,
        }
    )


def render_json(report: Report) -> str:
    return json.dumps(report_dict(report), indent=2) + "\n"


def schema() -> dict[str, Any]:
    """The JSON schema (draft 2020-12) of :func:`report_dict`'s output."""
    text = resources.files("gradlens.report").joinpath("report.schema.json").read_text()
    return dict(json.loads(text))
