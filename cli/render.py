"""Rich renderables the CLI prints (kept apart so output tests can render them to text)."""

from __future__ import annotations

from rich.table import Table

from gradlens.report.format import duration, timestamp
from gradlens.report.render_text import STATUS_STYLE
from gradlens.store import Run


def runs_table(runs: list[Run]) -> Table:
    table = Table(title=None, show_lines=False)
    for column in ("name", "status", "steps", "start", "duration"):
        table.add_column(column, justify="right" if column == "steps" else "left")
    for run in runs:
        style = STATUS_STYLE.get(run.status, "")
        table.add_row(
            run.name,
            f"[{style}]{run.status}[/]" if style else run.status,
            str(run.steps),
            timestamp(run.start_time),
            duration(run.duration),
        )
    return table
