"""GitHub-flavoured markdown (also what goes to ``$GITHUB_STEP_SUMMARY``)."""

from __future__ import annotations

from gradlens.report.build import Report, exit_code
from gradlens.report.format import duration, loss_value, number, sparkline
from gradlens.report.render_text import layer_rows, layers_title
from gradlens.report.sampling import sampling_note
from gradlens.report.summary import DEFINITIONS, health_text

__all__ = ["MAX_BYTES", "render_markdown"]

MAX_BYTES = 900_000  # GitHub refuses step summaries over 1024 KiB


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _verdict(report: Report) -> str:
    """❌ when the report fails its level, ⚠️ for warnings/errors below it, else ✅."""
    health = health_text(report.counts())
    if exit_code(report):
        return f"❌ {health} (fail-on {report.fail_on})"
    return f"⚠️ {health}" if report.worst in ("warning", "error") else f"✅ {health}"


def _code(text: str) -> str:
    """Inline code that survives backticks in the text."""
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def render_markdown(report: Report) -> str:
    run = report.run
    summary = report.summary
    lines = [
        f"## gradlens report: {_cell(_code(run['name']))} — {_verdict(report)}",
        "",
        f"**status** {run['status']} · **steps** {run['steps']} · "
        f"**duration** {duration(run['duration_s'])} · **device** {run.get('device') or '-'} · "
        f"**fail-on** {report.fail_on}",
        "",
    ]
    if report.loss:
        lines += [f"loss `{sparkline(report.loss)}`", ""]
    lines += [
        f"**final loss** {loss_value(summary.final_loss)} ({DEFINITIONS['final_loss']}) · "
        f"**best** {number(summary.best_loss)} ({DEFINITIONS['best_loss']}) · "
        f"**steps with a spike** {summary.loss_spike_steps} loss, "
        f"{summary.grad_spike_steps} gradient · **non-finite steps** {summary.nonfinite_steps}",
        "",
        f"**findings** {health_text(report.counts())}",
        "",
    ]
    if report.findings:
        lines += ["| severity | rule | steps | layer | evidence |", "|---|---|---|---|---|"]
        for f in report.findings:
            lines.append(
                f"| {f.severity} | {f.rule} | {f.steps} | {_cell(f.layer or '-')} | "
                f"{_cell(f.message + ': ' + f.evidence)} |"
            )
        lines.append("")
    rows = layer_rows(report) if report.layers else []
    if rows:
        lines += [f"### {layers_title(report)}", "", "| metric | rank | layer | value |"]
        lines += ["|---|---|---|---:|", *(f"| {' | '.join(map(_cell, r))} |" for r in rows), ""]
    for section in report.sections:
        lines += [f"### {section.title}", "", "| | |", "|---|---|"]
        lines += [f"| {_cell(label)} | {_cell(value)} |" for label, value in section.rows]
        lines.append("")
    note = sampling_note(report.sampling)
    if note:
        lines += [f"_sampled: {_cell(note)} (the rest every step)_", ""]
    text = "\n".join(lines) + "\n"
    if len(text.encode()) > MAX_BYTES:
        text = text.encode()[:MAX_BYTES].decode(errors="ignore") + "\n\n(truncated)\n"
    return text
