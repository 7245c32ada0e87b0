"""The runs page: every run under the directory with status, steps, duration, findings."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from dash import Dash, Input, Output, dcc, html

from gradlens.dashboard.components import counts_text, message, nav, run_href, table
from gradlens.dashboard.context import AppContext
from gradlens.store import Run

__all__ = ["compare_href", "layout", "register", "runs_rows"]

BASE_TABLES = {"scalars", "layers", "events"}


def layout(ctx: AppContext) -> html.Div:
    """The runs list with a selection for comparing."""
    names = ctx.catalog.names()
    body: list[Any] = [
        nav(None, "runs"),
        html.H2(f"Runs in {ctx.catalog.root}"),
    ]
    if not names:
        body.append(message(f"no gradlens runs under {ctx.catalog.root} yet", "warning"))
    body += [
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
    @app.callback(Output("runs-table", "children"), Input("refresh", "n_intervals"))
    def _table(_: int | None) -> object:
        runs = ctx.catalog.runs()
        if not runs:
            return None
        columns = ["run", "status", "steps", "duration", "started", "probes", "findings"]
        return table(columns, runs_rows(ctx, runs), "runs-rows")

    @app.callback(Output("compare-link", "href"), Input("runs-select", "value"))
    def _compare(selected: Sequence[str] | None) -> str:
        return compare_href(selected or [])


def compare_href(names: Sequence[str]) -> str:
    """The comparison URL for ``names``."""
    return "/compare?runs=" + ",".join(quote(n, safe="") for n in names) if names else "/compare"


def runs_rows(ctx: AppContext, runs: Sequence[Run]) -> list[list[object]]:
    """One table row per run (findings start computing in the background for small runs)."""
    rows = []
    for run in runs:
        name = run.path.name
        state = ctx.findings.state(run, start=False)
        if state.report is not None:
            findings = counts_text(state.report.counts())
        elif state.error:
            findings = "report failed"
        else:
            findings = "computing…" if state.pending else "open the run to report"
        probes = ", ".join(t for t in run.tables() if t not in BASE_TABLES) or "-"
        rows.append(
            [
                dcc.Link(name, href=run_href("run", name)),
                html.Span(run.status, className=f"status {run.status}"),
                f"{run.steps:,}",
                _duration(run.duration),
                _started(run.start_time),
                probes,
                findings,
            ]
        )
    return rows


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"


def _started(start: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(start)) if start else "-"
