"""``create_app(runs_dir)``: the Dash app, its routes and its refresh timer.

Routes: ``/`` runs, ``/run/NAME``, ``/curvature/NAME``, ``/landscape/NAME``,
``/collapse/NAME``, ``/compare?runs=A,B``. NAME is looked up in the run catalog, never used as
a path, so a URL cannot reach outside the runs directory.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import pandas as pd
import plotly.io as pio
from dash import Dash, Input, Output, State, dcc, html
from flask import Response, request

from gradlens.dashboard.catalog import RunCatalog, UnknownRunError
from gradlens.dashboard.components import message, nav, unreadable_text
from gradlens.dashboard.context import AppContext
from gradlens.dashboard.pages import collapse, compare, curvature, landscape, run, runs
from gradlens.dashboard.style import INDEX_STRING
from gradlens.errors import GradlensError
from gradlens.store import SCHEMAS

__all__ = ["create_app", "csv_text", "host_name", "needs_refresh", "render"]

RUN_PAGES = {"run": run, "curvature": curvature, "landscape": landscape, "collapse": collapse}


# A timer tick passes to the pages only once the previous round of redraws is in: Dash drops
# the answer of a callback fired again before it returned (plotly/dash#941), so on a busy
# machine (the training beside it) a page redrawn on every raw tick would never update.
# After 20 skipped ticks one goes through anyway (a request that never answered).
_TICK = """function(n) {
    const state = window.gradlensTick = window.gradlensTick || {skipped: 0};
    if (document.querySelector('[data-dash-is-loading="true"]') && state.skipped < 20) {
        state.skipped += 1;
        return window.dash_clientside.no_update;
    }
    state.skipped = 0;
    return n;
}"""

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
ANY_HOST = frozenset({"0.0.0.0", "::", ""})


def create_app(
    runs_dir: str | Path, refresh_ms: int = 3000, allowed_hosts: Iterable[str] | None = None
) -> Dash:
    """The dashboard for the runs directly under ``runs_dir``.

    ``allowed_hosts``: the names the browser may use in its ``Host`` header (port aside).
    By default only loopback names, so a web page that rebinds its own DNS name to
    127.0.0.1 cannot read runs; ``serve(host=...)`` adds the host it binds, and a wildcard
    bind (``0.0.0.0``) accepts any name.

    Example:
        >>> create_app("sample_runs").run(port=8050)           # doctest: +SKIP
    """
    ctx = AppContext(RunCatalog(Path(runs_dir)), refresh_ms=refresh_ms)
    hosts = LOOPBACK_HOSTS | {h.strip("[]").lower() for h in (allowed_hosts or ())}
    pio.templates.default = "plotly_white"  # once here, not per figure (see figures.py)
    app = Dash(
        __name__,
        title="gradlens",
        suppress_callback_exceptions=True,
        update_title="",
    )
    app.index_string = INDEX_STRING
    app.layout = html.Div(
        [
            dcc.Location(id="url"),
            dcc.Store(id="title"),
            dcc.Interval(id="refresh", interval=refresh_ms, disabled=True),
            dcc.Store(id="tick"),  # the refresh tick the pages redraw on (see _TICK)
            html.Div(id="page"),
        ]
    )

    @app.callback(
        Output("page", "children"),
        Output("refresh", "disabled"),
        Input("url", "pathname"),
        State("url", "search"),  # pages keep their view in the query: no re-render for it
    )
    def _route(pathname: str | None, search: str | None) -> Any:
        return render(ctx, pathname, search), not needs_refresh(ctx, pathname)

    # the tab names the run and the page ("grokking · curvature — gradlens")
    app.clientside_callback(
        """function(path) {
            const parts = (path || '/').split('/').filter(p => p);
            const page = parts[0] || 'runs';
            const name = parts.length > 1 ? decodeURIComponent(parts[1]) : '';
            document.title = (name ? name + ' · ' + page : page) + ' — gradlens';
            return document.title;
        }""",
        Output("title", "data"),
        Input("url", "pathname"),
    )

    app.clientside_callback(
        _TICK,
        Output("tick", "data"),
        Input("refresh", "n_intervals"),
        prevent_initial_call=True,
    )

    @app.callback(
        Output("refresh", "disabled", allow_duplicate=True),
        Input("tick", "data"),
        State("url", "pathname"),
        prevent_initial_call=True,
    )
    def _keep_refreshing(_: int, pathname: str | None) -> bool:
        return not needs_refresh(ctx, pathname)

    for page in (runs, *RUN_PAGES.values(), compare):
        page.register(app, ctx)

    @app.server.before_request
    def _check_host() -> Any:
        if hosts & ANY_HOST:
            return None
        if host_name(request.host) not in hosts:
            return Response("gradlens dashboard: unexpected Host header\n", 403)
        return None

    @app.server.route("/compare.csv")
    def _compare_csv() -> Response:
        names = [n for n in request.args.get("runs", "").split(",") if n]
        try:
            frames = [
                pd.read_csv(io.StringIO(csv_text(ctx, n, request.args))).assign(run=n)
                for n in names
            ]
            body = pd.concat(frames, ignore_index=True).to_csv(index=False) if frames else ""
        except Exception as exc:
            return Response(f"{exc}\n", 404, mimetype="text/plain")
        return Response(
            body,
            mimetype="text/csv",
            headers={"Content-Disposition": 'attachment; filename="compare.csv"'},
        )

    @app.server.route("/csv/<name>")
    def _csv(name: str) -> Response:
        try:
            body = csv_text(ctx, name, request.args)
        except Exception as exc:  # unknown run, table or metric; unreadable files
            return Response(f"{exc}\n", 404, mimetype="text/plain")
        filename = f"{name}-{request.args.get('metric', 'data')}.csv"
        return Response(
            body,
            mimetype="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{quote(filename)}"'},
        )

    app.server.config["GRADLENS_CONTEXT"] = ctx  # for tests and embedding
    return app


def render(ctx: AppContext, pathname: str | None, search: str | None = None) -> Any:
    """The page for a URL (a plain function: the router's body)."""
    page, name = _split(pathname)
    if page in ("", "runs"):
        return runs.layout(ctx)
    if page == "compare":
        return compare.layout(ctx, search)
    if page in RUN_PAGES:
        try:
            found = ctx.run(name)
        except UnknownRunError as exc:
            return html.Div([nav(None, page), message(str(exc), "error")])
        except Exception as exc:
            return html.Div([nav(name, page), message(unreadable_text(exc), "error")])
        try:
            return RUN_PAGES[page].layout(ctx, found, search)
        except Exception as exc:
            return html.Div([nav(name, page), message(unreadable_text(exc), "error")])
    return html.Div([nav(None, ""), message(f"no page {pathname!r}", "error")])


def host_name(host: str | None) -> str:
    """The name in a ``Host`` header, without its port or IPv6 brackets, lower case."""
    host = (host or "").strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def csv_text(ctx: AppContext, name: str, args: Mapping[str, str]) -> str:
    """One series of run ``name`` as CSV (step, value, seconds since start).

    ``args``: ``table`` and ``metric``, optionally ``layer`` and ``index`` (param group);
    ``lr`` without an index gives every param group (column ``series``).
    """
    table = args.get("table", "scalars")
    metric = args.get("metric", "")
    if table not in SCHEMAS or table in ("events", "spectrum", "landscape"):
        raise GradlensError(f"no series table {table!r}")
    data = ctx.data(name)
    if not data.has(table) or metric not in data.metrics(table):
        raise GradlensError(f"no {metric!r} in table {table!r} of run {name!r}")
    index = args.get("index")
    if table == "scalars" and index is None:
        frame = data.groups(metric)
    else:
        frame = data.series(
            table,
            metric,
            layer=args.get("layer"),
            index=int(index) if index is not None and index.isdigit() else None,
        )
    return frame.to_csv(index=False)


def needs_refresh(ctx: AppContext, pathname: str | None) -> bool:
    """True while the page shows something that is still changing (a run being written)."""
    page, name = _split(pathname)
    try:
        if page in RUN_PAGES:
            found = ctx.run(name)
            return found.status == "running" or ctx.findings.state(found, start=False).pending
        if page in ("", "runs"):
            return any(
                r.status == "running" or ctx.findings.state(r, start=False).pending
                for r in ctx.catalog.runs()
            )
    except Exception:
        return False
    return False


def _split(pathname: str | None) -> tuple[str, str]:
    parts = (pathname or "/").strip("/").split("/", 1)
    return parts[0], unquote(parts[1]) if len(parts) > 1 else ""
