"""GitHub-flavoured markdown (also what goes to ``$GITHUB_STEP_SUMMARY``)."""

from __future__ import annotations

from gradlens.report.build import Report, exit_code
from gradlens.report.format import duration, loss_value, number, sparkline

__all__ = ["MAX_BYTES", "render_markdown"]

MAX_BYTES = 900_000  # GitHub refuses step summaries over 1024 KiB


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(report: Report) -> str:
    run = report.run
    counts = report.counts()
    verdict = "❌ unhealthy" if exit_code(report) else "✅ healthy"
    lines = [
        f"## gradlens report: `{run['name']}` — {verdict}",
        "",
        f"**status** {run['status']} · **steps** {run['steps']} · "
        f"**duration** {duration(run['duration_s'])} · **device** {run.get('device') or '-'} · "
        f"**fail-on** {report.fail_on}",
        "",
    ]
    if report.loss:
        lines += [
            f"loss `{sparkline(report.loss)}` final {loss_value(run['final_loss'])}, "
            f"best {number(run['best_loss'])}",
            "",
        ]
    lines.append(
        f"{counts['error']} error(s), {counts['warning']} warning(s), {counts['info']} info"
    )
    lines.append("")
    if report.findings:
        lines += ["| severity | rule | steps | layer | evidence |", "|---|---|---|---|---|"]
        for f in report.findings:
            lines.append(
                f"| {f.severity} | {f.rule} | {f.steps} | {_cell(f.layer or '-')} | "
                f"{_cell(f.message + ': ' + f.evidence)} |"
            )
        lines.append("")
    for section in report.sections:
        lines += [f"### {section.title}", "", "| | |", "|---|---|"]
        lines += [f"| {_cell(label)} | {_cell(value)} |" for label, value in section.rows]
        lines.append("")
    text = "\n".join(lines) + "\n"
    if len(text.encode()) > MAX_BYTES:
        text = text.encode()[:MAX_BYTES].decode(errors="ignore") + "\n\n(truncated)\n"
    return text
