"""The runs page: every run with status and health, steps, duration, start, probes, findings.

The table sorts and filters (a regular expression over run names); a run whose files cannot
be read is listed with the reason instead of breaking the page.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from dash import Dash, Input, Output, dcc, html

from gradlens.dashboard.components import (
    counts_text,
    message,
    nav,
    run_href,
    started,
    status_badges,
    table,
)
from gradlens.dashboard.context import AppContext
from gradlens.report.findings import severity_rank
from gradlens.store import Run

__all__ = ["SORTS", "compare_href", "layout", "register", "runs_rows", "runs_table"]

BASE_TABLES = {"scalars", "layers", "events"}
COLUMNS = ["run", "status", "health", "steps", "duration", "started", "probes", "findings"]
SORTS = {
    "started": "start time",
    "name": "name",
    "health": "health (worst first)",
    "steps": "steps",
    "duration": "duration",
}


def layout(ctx: AppContext, search: str | None = None) -> html.Div:
    """The runs list with a filter, a sort order and a selection for comparing."""
    names = ctx.catalog.names()
    body: list[Any] = [nav(None, "runs"), html.H2(f"Runs in {ctx.catalog.root}")]
    if not names and not ctx.catalog.unreadable():
        body.append(message(f"no gradlens runs under {ctx.catalog.root} yet", "warning"))
    body += [
        html.Div(
            [
                dcc.Input(
                    id="runs-filter",
                    type="text",
                    placeholder="filter runs (regex)",
                    debounce=False,
                ),
                html.Label("sort by"),
                dcc.Dropdown(
                    id="runs-sort",
                    options=[{"label": v, "value": k} for k, v in SORTS.items()],
                    value="started",
                    clearable=False,
                    style={"minWidth": "200px"},
                ),
            ],
            className="runs-filter",
        ),
        html.Div(id="runs-table"),
        html.Div(
            [
                html.Label("select runs to compare: "),
                dcc.Checklist(id="runs-select", options=names, value=[], inline=True),
                dcc.Link("Compare selected →", id="compare-link", href="/compare"),
            ],
            className="select",
        ),
    ]
    return html.Div(body)


def register(app: Dash, ctx: AppContext) -> None:
    @app.callback(
        Output("runs-table", "children"),
        Input("tick", "data"),
        Input("runs-filter", "value"),
        Input("runs-sort", "value"),
    )
    def _table(_: int | None, pattern: str | None, sort: str | None) -> object:
        return runs_table(ctx, pattern, sort)

    @app.callback(Output("compare-link", "href"), Input("runs-select", "value"))
    def _compare(selected: Sequence[str] | None) -> str:
        return compare_href(selected or [])


def runs_table(ctx: AppContext, pattern: str | None = None, sort: str | None = None) -> Any:
    """The runs table, filtered by the regex ``pattern`` and sorted by ``sort``."""
    runs = ctx.catalog.runs()
    broken = ctx.catalog.unreadable()
    try:
        keep = re.compile(pattern or "", re.IGNORECASE)
    except re.error as exc:
        return message(f"not a regular expression: {exc}", "warning")
    runs = [r for r in runs if keep.search(r.path.name) and r.path.name not in broken]
    broken = {n: why for n, why in broken.items() if keep.search(n)}
    if not runs and not broken:
        return None
    rows = runs_rows(ctx, runs, sort)
    rows += [
        [name, html.Span("unreadable", className="status crashed"), why, "", "", "", "", ""]
        for name, why in broken.items()
    ]
    return table(COLUMNS, rows, "runs-rows")


def compare_href(names: Sequence[str]) -> str:
    """The comparison URL for ``names``."""
    return "/compare?runs=" + ",".join(quote(n, safe="") for n in names) if names else "/compare"


def runs_rows(ctx: AppContext, runs: Sequence[Run], sort: str | None = None) -> list[list[object]]:
    """One table row per run (findings start computing in the background for small runs).

    The last cell of each row is the findings text; a run whose files cannot be read gets
    ``unreadable: <reason>`` there and blank cells before it.
    """
    rows: list[tuple[Any, list[object]]] = []
    bad: list[list[object]] = []
    for run in runs:
        name = run.path.name
        try:
            state = ctx.findings.state(run, start=False)
            if state.report is not None:
                findings = counts_text(state.report.counts())
            elif state.error:
                findings = state.error if "unreadable" in state.error else "report failed"
            else:
                findings = "computing…" if state.pending else "open the run to report"
            probes = ", ".join(t for t in run.tables() if t not in BASE_TABLES) or "-"
            status, badge = status_badges(run, state, prefix=f"runs-{len(rows)}")
            worst = state.report.worst if state.report is not None else None
            key = {
                "name": name.lower(),
                "started": -(run.start_time or 0.0),
                "health": -(severity_rank(worst) + 1 if worst else 0),
                "steps": -run.steps,
                "duration": -(run.duration or 0.0),
            }
            rows.append(
                (
                    key.get(sort or "started", key["started"]),
                    [
                        dcc.Link(name, href=run_href("run", name)),
                        status,
                        badge,
                        f"{run.steps:,}",
                        _duration(run.duration),
                        started(run.start_time),
                        probes,
                        findings,
                    ],
                )
            )
        except Exception as exc:
            bad.append(
                [
                    dcc.Link(name, href=run_href("run", name)),
                    html.Span("unreadable", className="status crashed"),
                    *[""] * 5,
                    f"unreadable: {exc}",
                ]
            )
    rows.sort(key=lambda r: r[0])
    return [cells for _, cells in rows] + bad


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"
