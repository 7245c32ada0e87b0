"""Stability reports: rules → findings → text, markdown, JSON or JUnit; run comparison."""

from gradlens.report import sections as _sections  # noqa: F401  (registers probe sections)
from gradlens.report.build import PROBE_SECTIONS, Report, Section, build_report, exit_code
from gradlens.report.compare import Comparison, compare_runs, compare_schema, render_compare
from gradlens.report.config import ReportConfig, Thresholds, load_config
from gradlens.report.findings import Finding
from gradlens.report.render_json import render_json, report_dict
from gradlens.report.render_junit import render_junit
from gradlens.report.render_markdown import render_markdown
from gradlens.report.render_text import render_text, report_renderable
from gradlens.report.rules import RULES
from gradlens.report.summary import DEFINITIONS, RunSummary, health_text, summarize

__all__ = [
    "DEFINITIONS",
    "PROBE_SECTIONS",
    "RULES",
    "Comparison",
    "Finding",
    "Report",
    "ReportConfig",
    "RunSummary",
    "Section",
    "Thresholds",
    "build_report",
    "compare_runs",
    "compare_schema",
    "exit_code",
    "health_text",
    "load_config",
    "render_compare",
    "render_json",
    "render_junit",
    "render_markdown",
    "render_text",
    "report_dict",
    "report_renderable",
    "summarize",
]
