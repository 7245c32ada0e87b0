"""Rich renderables the CLI prints (kept apart so output tests can render them to text)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from gradlens.cli.runs import run_folders
from gradlens.report.config import ReportConfig
from gradlens.report.format import duration, loss_value, timestamp
from gradlens.report.render_text import SEVERITY_STYLE, STATUS_STYLE
from gradlens.report.summary import DEFINITIONS, RunSummary, summarize

__all__ = ["Entry", "list_entries", "runs_table"]


@dataclass(frozen=True)
class Entry:
    """A row of ``ls``: a run's summary, or why its folder could not be read."""

    folder: Path
    summary: RunSummary | None = None
    error: str | None = None


def list_entries(
    folder: Path, unreadable: tuple[type[BaseException], ...], config: ReportConfig | None = None
) -> list[Entry]:
    """Every run under ``folder`` (oldest first), then the unreadable ones by name; health
    from the findings ``report`` gives with ``config``."""
    from gradlens.store import open_run

    good, bad = [], []
    for path in run_folders(folder):
        try:
            good.append(Entry(path, summary=summarize(open_run(path), config)))
        except unreadable as exc:
            lines = str(exc).strip().splitlines()
            bad.append(Entry(path, error=lines[0] if lines else type(exc).__name__))
    good.sort(key=lambda e: (e.summary.start_time or 0.0, e.folder.name) if e.summary else (0, ""))
    return good + bad


def runs_table(entries: list[Entry]) -> RenderableType:
    """One line per run (fits 80 columns); unreadable runs say why below the table.

    The name is the run's folder name: what ``gradlens report NAME`` takes.
    """
    table = Table(box=None, pad_edge=False, header_style="bold underline")
    longest = max((len(e.folder.name) for e in entries), default=4)
    table.add_column("name", no_wrap=True, min_width=min(longest, 32), overflow="fold")
    table.add_column("status", no_wrap=True)
    table.add_column("steps", justify="right", no_wrap=True)
    table.add_column("final loss", justify="right", no_wrap=True)
    table.add_column("health", no_wrap=True)
    table.add_column("started", no_wrap=True)
    table.add_column("duration", justify="right", no_wrap=True)
    notes: list[RenderableType] = []
    for entry in entries:
        s = entry.summary
        name = Text(entry.folder.name)
        if s is None:
            table.add_row(name, Text("unreadable", "bold red"), "-", "-", "-", "-", "-")
            notes.append(
                Text.assemble((f"{entry.folder.name}: ", "bold"), (entry.error or "", "red"))
            )
            continue
        table.add_row(
            name,
            Text(s.status, STATUS_STYLE.get(s.status, "")),
            str(s.steps),
            loss_value(s.final_loss),
            Text(s.worst_count, SEVERITY_STYLE.get(s.worst or "", "green")),
            timestamp(s.start_time)[5:16] if s.start_time is not None else "-",
            duration(s.duration_s),
        )
    legend = Text(
        f"final loss: {DEFINITIONS['final_loss']} · health: the worst finding "
        "(all of them: gradlens report NAME)",
        style="dim",
    )
    return Group(table, Text(), legend, *notes)
