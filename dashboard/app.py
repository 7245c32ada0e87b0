"""``create_app(runs_dir)``: the Dash app, its routes and its refresh timer.

Routes: ``/`` runs, ``/run/NAME``, ``/curvature/NAME``, ``/landscape/NAME``,
``/collapse/NAME``, ``/compare?runs=A,B``. NAME is looked up in the run catalog, never used as
a path, so a URL cannot reach outside the runs directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import unquote

import plotly.io as pio
from dash import Dash, Input, Output, State, dcc, html

from gradlens.dashboard.catalog import RunCatalog, UnknownRunError
from gradlens.dashboard.components import message, nav
from gradlens.dashboard.context import AppContext
from gradlens.dashboard.pages import collapse, compare, curvature, landscape, run, runs
from gradlens.dashboard.style import INDEX_STRING

__all__ = ["create_app", "needs_refresh", "render"]

RUN_PAGES = {"run": run, "curvature": curvature, "landscape": landscape, "collapse": collapse}


def create_app(runs_dir: str | Path, refresh_ms: int = 3000) -> Dash:
    """The dashboard for the runs directly under ``runs_dir``.

    Example:
        >>> create_app("sample_runs").run(port=8050)           # doctest: +SKIP
    """
    ctx = AppContext(RunCatalog(Path(runs_dir)), refresh_ms=refresh_ms)
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
            dcc.Interval(id="refresh", interval=refresh_ms, disabled=True),
            html.Div(id="page"),
        ]
    )

    @app.callback(
        Output("page", "children"),
        Output("refresh", "disabled"),
        Input("url", "pathname"),
        Input("url", "search"),
    )
    def _route(pathname: str | None, search: str | None) -> Any:
        return render(ctx, pathname, search), not needs_refresh(ctx, pathname)

    @app.callback(
        Output("refresh", "disabled", allow_duplicate=True),
        Input("refresh", "n_intervals"),
        State("url", "pathname"),
        prevent_initial_call=True,
    )
    def _keep_refreshing(_: int, pathname: str | None) -> bool:
        return not needs_refresh(ctx, pathname)

    for page in (runs, *RUN_PAGES.values(), compare):
        page.register(app, ctx)
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
        return RUN_PAGES[page].layout(ctx, found)
    return html.Div([nav(None, ""), message(f"no page {pathname!r}", "error")])


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
    except UnknownRunError:
        return False
    return False


def _split(pathname: str | None) -> tuple[str, str]:
    parts = (pathname or "/").strip("/").split("/", 1)
    return parts[0], unquote(parts[1]) if len(parts) > 1 else ""
