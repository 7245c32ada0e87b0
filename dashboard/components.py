"""Building blocks the pages share: navigation, chart controls, tables, messages."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote, urlencode

from dash import dcc, html

from gradlens.dashboard.figures import Axes, empty_figure
from gradlens.dashboard.findings import ReportState
from gradlens.report import Report
from gradlens.store import Run

F = TypeVar("F", bound=Callable[..., Any])

__all__ = [
    "PROBE_PAGES",
    "axes_from",
    "axes_search",
    "config_details",
    "controls",
    "counts_text",
    "csv_link",
    "findings_table",
    "graph",
    "guarded",
    "health",
    "message",
    "nav",
    "read_state",
    "run_href",
    "state_search",
    "status_badges",
    "table",
    "unreadable_text",
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


def controls(
    log_y: bool = False,
    smoothing: bool = True,
    state: Mapping[str, str] | None = None,
    extra: Sequence[Any] = (),
) -> html.Div:
    """Chart controls (ids: smoothing, xaxis, logy); initial values from the URL ``state``.

    ``smoothing=False`` leaves the slider out (pages whose curves are sparse probes: a
    control is shown only where it acts). ``logy`` also offers "ignore outliers", which
    clips each y axis to the 1st–99th percentile of what it draws.
    """
    state = state or {}
    weight = _float(state.get("smoothing"), 0.6)
    xaxis = state.get("x") if state.get("x") in ("step", "time", "wall") else "step"
    flags = ["log"] if state.get("logy", "1" if log_y else "0") == "1" else []
    if state.get("outliers") == "1":
        flags.append("outliers")
    items: list[Any] = []
    if smoothing:
        items += [
            html.Label("smoothing", htmlFor="smoothing"),
            html.Div(
                dcc.Slider(
                    id="smoothing",
                    min=0,
                    max=0.99,
                    step=0.01,
                    value=min(max(weight, 0.0), 0.99),
                    marks={0: "0", 0.6: "0.6", 0.99: "0.99"},
                    tooltip={"placement": "bottom"},
                ),
                className="slider",
            ),
        ]
    items += [
        html.Label("x axis"),
        dcc.RadioItems(
            id="xaxis",
            options=[
                {"label": "step", "value": "step"},
                {"label": "relative", "value": "time"},
                {"label": "wall", "value": "wall"},
            ],
            value=xaxis,
            inline=True,
        ),
        dcc.Checklist(
            id="logy",
            options=[
                {"label": "log y", "value": "log"},
                {"label": "ignore outliers", "value": "outliers"},
            ],
            value=flags,
            inline=True,
        ),
        *extra,
    ]
    return html.Div(items, className="controls")


def read_state(search: str | None) -> dict[str, str]:
    """The view state in a URL query (``?layer=…&x=time``): last value of each key."""
    query = parse_qs((search or "").lstrip("?"), keep_blank_values=False)
    return {k: v[-1] for k, v in query.items() if v}


def state_search(state: Mapping[str, object]) -> str:
    """``state`` as a URL query (empty values left out), the inverse of ``read_state``."""
    items = {k: str(v) for k, v in state.items() if v not in (None, "", [])}
    return "?" + urlencode(items) if items else ""


def axes_search(xaxis: object, logy: Sequence[str] | None) -> str:
    """The x-axis mode and the log-y/outlier flags as a URL query (read back by ``controls``)."""
    flags = logy or []
    return state_search(
        {
            "x": xaxis if xaxis != "step" else None,
            "logy": "1" if "log" in flags else "0",
            "outliers": "1" if "outliers" in flags else None,
        }
    )


def _float(text: object, default: float) -> float:
    try:
        value = float(str(text))
    except (TypeError, ValueError):
        return default
    return value if math.isfinite(value) else default


def axes_from(
    smoothing: float | None, xaxis: str | None, logy: Sequence[str] | None, start: float | None
) -> Axes:
    """The ``Axes`` the controls describe (tolerant of missing values from the browser)."""
    weight = min(max(_float(smoothing or 0.0, 0.0), 0.0), 0.99)
    return Axes(
        smoothing=weight,
        xaxis=xaxis if xaxis in ("step", "time", "wall") else "step",
        log_y="log" in (logy or []),
        start_time=start,
        ignore_outliers="outliers" in (logy or []),
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


def unreadable_text(exc: BaseException) -> str:
    """``unreadable: <reason>`` with paths shortened to the run's folder and table."""
    text = str(exc)
    for word in text.split():
        if "/" in word and word.count("/") > 2:
            text = text.replace(
                word, "/".join(word.rstrip(":").split("/")[-3:]) + ":" * word.endswith(":")
            )
    return text if text.startswith("unreadable") else f"unreadable: {text}"


def guarded(blanks: int, extra: tuple[Any, ...] = ()) -> Callable[[F], F]:
    """A callback body that answers ``blanks`` empty figures (plus ``extra``) saying why,
    instead of raising, when a run's files cannot be read: one bad file affects only its run.
    """

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def body(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                blank = empty_figure(unreadable_text(exc))
                out = (blank,) * blanks + extra
                return out if len(out) > 1 else out[0]

        return body  # type: ignore[return-value]

    return wrap


def health(state: ReportState | None) -> tuple[str, str]:
    """(label, css class) for a run's health: the worst finding of its report."""
    if state is None or state.report is None:
        if state is not None and state.error:
            return "unreadable", "error"
        return ("checking…", "pending") if state is not None and state.pending else ("-", "")
    counts = state.report.counts()
    if counts["error"]:
        return f"✕ unhealthy: {counts['error']} error{'s' if counts['error'] > 1 else ''}", "error"
    if counts["warning"]:
        n = counts["warning"]
        return f"⚠ {n} warning{'s' if n > 1 else ''}", "warning"
    return "✓ healthy", "healthy"


def status_badges(run: Run, state: ReportState | None, prefix: str = "run") -> list[Any]:
    """The run's status and, next to it, its health (ids ``{prefix}-status``/``-health``)."""
    label, cls = health(state)
    # a run that finished with errors is not shown in the reassuring "finished" green
    quiet = " unhealthy" if cls == "error" else ""
    return [
        html.Span(run.status, id=f"{prefix}-status", className=f"status {run.status}{quiet}"),
        html.Span(label, id=f"{prefix}-health", className=f"health {cls}"),
    ]


def csv_link(name: str, table: str, metric: str, **where: object) -> html.A:
    """A link that downloads one series of run ``name`` as CSV (served by ``app``)."""
    query = {"table": table, "metric": metric, **{k: v for k, v in where.items() if v is not None}}
    href = f"/csv/{quote(name, safe='')}?" + urlencode(query)
    label = metric if "layer" not in where else f"{metric} of {where['layer']}"
    return html.A(f"⤓ {label}", href=href, className="csv", download=f"{name}-{metric}.csv")


def config_details(meta: Mapping[str, Any], extra: Sequence[tuple[str, str]] = ()) -> html.Details:
    """argv, versions, git sha, device and the recorded config (hyperparameters) of a run.

    ``extra``: more (key, value) rows, e.g. what the run's data says (its learning rates).
    """
    rows: list[list[Any]] = [[k, v] for k, v in extra]
    argv = meta.get("argv")
    if isinstance(argv, list):
        rows.append(["argv", html.Code(" ".join(str(a) for a in argv))])
    versions = meta.get("versions")
    if isinstance(versions, dict):
        rows.append(["versions", ", ".join(f"{k} {v}" for k, v in versions.items())])
    for key in ("git_sha", "device", "host", "cwd"):
        if meta.get(key):
            rows.append([key, str(meta[key])])
    for key, value in flatten(meta.get("config")).items():
        rows.append([key, str(value)])
    for key in ("optimizer", "hyperparameters", "hparams"):
        for sub, value in flatten(meta.get(key), key).items():
            rows.append([sub, str(value)])
    return html.Details(
        [html.Summary("config"), table(["key", "value"], rows, "config-rows")],
        className="config",
    )


def flatten(value: object, prefix: str = "") -> dict[str, object]:
    """A nested dict as ``{"a.b": value}`` (non-dicts give ``{}``)."""
    if not isinstance(value, Mapping):
        return {}
    out: dict[str, object] = {}
    for key, item in value.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(item, Mapping):
            out.update(flatten(item, name))
        else:
            out[name] = item
    return out


def finding_rows(report: Report) -> list[dict[str, Any]]:
    """What a click on a finding needs: its steps and layer."""
    return [{"start": f.step_start, "end": f.step_end, "layer": f.layer} for f in report.findings]


def findings_table(report: Report, links: bool = False) -> html.Div:
    """The report's findings: severity, rule, steps, layer, message and evidence.

    With ``links``, a finding's steps zoom every chart of the page to them (and open its
    layer), and its layer opens the layer's curves (ids ``finding-steps``/``finding-layer``).
    """
    if not report.findings:
        return message("no findings: every rule passed", "info")
    rows = []
    for i, f in enumerate(report.findings):
        steps: Any = f.steps
        layer: Any = f.layer or ""
        if links and f.step_start is not None:
            steps = html.Button(f.steps, id={"type": "finding-steps", "index": i}, className="link")
        if links and f.layer:
            layer = html.Button(f.layer, id={"type": "finding-layer", "index": i}, className="link")
        rows.append(
            [
                html.Span(f.severity, className=f"sev {f.severity}"),
                f.rule,
                steps,
                layer,
                html.Div([html.B(f.message), html.Div(f.evidence, className="evidence")]),
            ]
        )
    return html.Div(
        [
            html.Div(counts_text(report.counts()), className="summary"),
            table(["severity", "rule", "steps", "layer", "finding"], rows, "findings-rows"),
        ]
    )


def started(start: float | None) -> str:
    """A run's start as local ``YYYY-MM-DD HH:MM`` (``-`` when unknown)."""
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(start)) if start else "-"
