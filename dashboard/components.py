"""Building blocks the pages share: navigation, chart controls, tables, messages."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from dash import dcc, html

from gradlens.dashboard.figures import Axes
from gradlens.report import Report

__all__ = [
    "PROBE_PAGES",
    "axes_from",
    "controls",
    "counts_text",
    "findings_table",
    "graph",
    "message",
    "nav",
    "run_href",
    "table",
]

# page -> (title, the tables it draws)
PROBE_PAGES = {
    "curvature": ("Curvature", ("hessian", "spectrum")),
    "landscape": ("Landscape", ("landscape",)),
    "collapse": ("Collapse", ("collapse", "softmax")),
}


def run_href(page: str, name: str) -> str:
    """The URL of ``page`` for run ``name``."""
    return f"/{page}/{quote(name, safe='')}"


def nav(name: str | None = None, active: str = "runs") -> html.Nav:
    """The header: links to the runs list, the run's pages and the comparison."""
    links = [("runs", "/", "Runs")]
    if name is not None:
        links.append(("run", run_href("run", name), "Run"))
        links += [(page, run_href(page, name), title) for page, (title, _) in PROBE_PAGES.items()]
    compare = f"/compare?runs={quote(name, safe='')}" if name else "/compare"
    links.append(("compare", compare, "Compare"))
    items: list[Any] = [html.Span("gradlens", className="brand")]
    for page, href, title in links:
        cls = "active" if page == active else ""
        items.append(dcc.Link(title, href=href, id=f"nav-{page}", className=cls))
    if name is not None:
        items.append(html.Span(name, className="run-name"))
    return html.Nav(items, className="nav")


def controls(log_y: bool = False) -> html.Div:
    """Smoothing slider, x-axis choice and log-y toggle (ids: smoothing, xaxis, logy)."""
    return html.Div(
        [
            html.Label("smoothing", htmlFor="smoothing"),
            html.Div(
                dcc.Slider(
                    id="smoothing",
                    min=0,
                    max=0.99,
                    step=0.01,
                    value=0.6,
                    marks={0: "0", 0.6: "0.6", 0.99: "0.99"},
                    tooltip={"placement": "bottom"},
                ),
                className="slider",
            ),
            html.Label("x axis"),
            dcc.RadioItems(
                id="xaxis",
                options=[
                    {"label": "step", "value": "step"},
                    {"label": "relative", "value": "time"},
                    {"label": "wall", "value": "wall"},
                ],
                value="step",
                inline=True,
            ),
            dcc.Checklist(
                id="logy",
                options=[{"label": "log y", "value": "log"}],
                value=["log"] if log_y else [],
            ),
        ],
        className="controls",
    )


def axes_from(
    smoothing: float | None, xaxis: str | None, logy: Sequence[str] | None, start: float | None
) -> Axes:
    """The ``Axes`` the controls describe (tolerant of missing values from the browser)."""
    weight = min(max(float(smoothing or 0.0), 0.0), 0.99)
    return Axes(
        smoothing=weight,
        xaxis=xaxis if xaxis in ("step", "time", "wall") else "step",
        log_y="log" in (logy or []),
        start_time=start,
    )


def graph(graph_id: str, height: int | None = None) -> dcc.Loading:
    """A graph with a loading spinner (figure filled in by a callback)."""
    style = {"height": f"{height}px"} if height else {}
    return dcc.Loading(
        dcc.Graph(id=graph_id, config={"displaylogo": False}, style=style),
        type="circle",
        delay_show=400,
    )


def message(text: str, kind: str = "info") -> html.Div:
    """A one-line notice (``info``, ``warning`` or ``error``)."""
    return html.Div(text, className=f"message {kind}")


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]], table_id: str) -> html.Table:
    """A plain HTML table."""
    head = html.Thead(html.Tr([html.Th(c) for c in columns]))
    body = html.Tbody([html.Tr([html.Td(cell) for cell in row]) for row in rows])
    return html.Table([head, body], id=table_id, className="table")


def counts_text(counts: dict[str, int]) -> str:
    """``{"error": 1, "warning": 2, "info": 0}`` → ``"1 error, 2 warnings"`` (or ``"none"``)."""
    parts = [f"{n} {sev}{'s' if n > 1 and sev != 'info' else ''}" for sev, n in counts.items() if n]
    return ", ".join(parts) or "none"


def findings_table(report: Report) -> html.Div:
    """The report's findings: severity, rule, steps, layer, message and evidence."""
    if not report.findings:
        return message("no findings: every rule passed", "info")
    rows = [
        [
            html.Span(f.severity, className=f"sev {f.severity}"),
            f.rule,
            f.steps,
            f.layer or "",
            html.Div([html.B(f.message), html.Div(f.evidence, className="evidence")]),
        ]
        for f in report.findings
    ]
    return html.Div(
        [
            html.Div(counts_text(report.counts()), className="summary"),
            table(["severity", "rule", "steps", "layer", "finding"], rows, "findings-rows"),
        ]
    )
