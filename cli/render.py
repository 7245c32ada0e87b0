"""Rich renderables the CLI prints (kept apart so output tests can render them to text)."""

from __future__ import annotations

import time

from rich.table import Table

from gradlens.store import Run

STATUS_STYLE = {
    "running": "cyan",
    "finished": "green",
    "failed": "red",
    "interrupted": "yellow",
    "crashed": "bold red",
}


def format_duration(seconds: float | None) -> str:
    """``75.2`` → ``1m15s``; None → ``-``."""
    if seconds is None:
        return "-"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def format_time(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


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
            format_time(run.start_time),
            format_duration(run.duration),
        )
    return table
