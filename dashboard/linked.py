"""Linked charts in the browser: one x range and one hover crosshair for a page's charts.

Zooming, panning or double-clicking any chart writes its x range to a ``dcc.Store``; the
store is applied to every other chart with ``Plotly.relayout`` (in the browser, no server
round trip), so the same step sits under the same pixel column everywhere. Server callbacks
read the store to draw new figures at the current zoom (and the heatmap re-buckets to it).
Hovering a curve shows the hover label at the same x on the other curves.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from dash import Dash, Input, Output, State

__all__ = ["register_linked_x"]

_SAME = """
function glSame(a, b) {
  if (a === null || b === null || a === undefined || b === undefined) return a === b;
  const num = v => (typeof v === 'string' ? Date.parse(v.replace(' ', 'T')) : Number(v));
  const [a0, a1, b0, b1] = [num(a[0]), num(a[1]), num(b[0]), num(b[1])];
  const tol = 1e-6 * Math.max(Math.abs(a1 - a0), 1e-9);
  return Math.abs(a0 - b0) <= tol && Math.abs(a1 - b1) <= tol;
}
"""

# relayoutData of any chart -> the shared range ([lo, hi], or null for the full range)
_TO_STORE = (
    "function() {"
    + _SAME
    + """
  const nothing = window.dash_clientside.no_update;
  const current = arguments[arguments.length - 1];
  const trig = window.dash_clientside.callback_context.triggered;
  if (!trig || !trig.length || !trig[0].value) return nothing;
  const ev = trig[0].value;
  let lo, hi, auto = false;
  for (const [k, v] of Object.entries(ev)) {
    if (/^xaxis\\d*\\.autorange$/.test(k) && v) auto = true;
    const m = k.match(/^xaxis\\d*\\.range\\[(0|1)\\]$/);
    if (m) { if (m[1] === '0') lo = v; else hi = v; }
    if (/^xaxis\\d*\\.range$/.test(k) && Array.isArray(v)) { lo = v[0]; hi = v[1]; }
  }
  const next = auto ? null : (lo !== undefined && hi !== undefined ? [lo, hi] : undefined);
  if (next === undefined || glSame(next, current)) return nothing;
  return next;
}"""
)

# the shared range -> every chart whose x range differs (Plotly.relayout in place)
_TO_CHARTS = (
    "function(range) {"
    + _SAME
    + r"""
  const ids = IDS;
  for (const id of ids) {
    const gd = document.querySelector('#' + id + ' .js-plotly-plot');
    if (!gd || !gd._fullLayout || !gd._fullLayout.xaxis || !gd.data || !gd.data.length) continue;
    const keys = Object.keys(gd._fullLayout).filter(k => /^xaxis\d*$/.test(k));
    const stale = keys.filter(k => range === null || range === undefined
      ? !gd._fullLayout[k].autorange : !glSame(gd._fullLayout[k].range, range));
    if (!stale.length) continue;
    const update = {};  // every x axis: subplots may match the bottom one, not the top
    for (const k of keys) {
      if (range === null || range === undefined) update[k + '.autorange'] = true;
      else update[k + '.range'] = [range[0], range[1]];
    }
    Plotly.relayout(gd, update);
  }
  return range === undefined ? null : range;
}"""
)

# hovering one curve shows the label at the same x on the others
_HOVER = """
function() {
  const ids = IDS;
  const charts = () => ids.map(id => document.querySelector('#' + id + ' .js-plotly-plot'))
                          .filter(gd => gd && gd._fullLayout);
  setTimeout(() => {
    for (const gd of charts()) {
      if (gd._glLinked) continue;
      gd._glLinked = true;
      gd.on('plotly_hover', ev => {
        if (window._glHovering || !ev || !ev.xvals || !ev.xvals.length) return;
        window._glHovering = true;
        try {
          for (const other of charts()) {
            if (other !== gd) Plotly.Fx.hover(other, {xval: ev.xvals[0]}, 'xy');
          }
        } finally { window._glHovering = false; }
      });
      gd.on('plotly_unhover', () => {
        if (window._glHovering) return;
        for (const other of charts()) if (other !== gd) Plotly.Fx.unhover(other);
      });
    }
  }, 50);
  return window.dash_clientside.no_update;
}"""


def register_linked_x(
    app: Dash, prefix: str, graphs: Sequence[str], hover: Sequence[str] = ()
) -> None:
    """Link the x axes of ``graphs`` through the store ``{prefix}-xrange``.

    The page must hold ``dcc.Store(id=f"{prefix}-xrange")`` and
    ``dcc.Store(id=f"{prefix}-xsync")``; ``hover`` lists the curves whose hover is shared.
    """
    ids = json.dumps(list(graphs))
    app.clientside_callback(
        _TO_STORE,
        Output(f"{prefix}-xrange", "data", allow_duplicate=True),
        [Input(g, "relayoutData") for g in graphs],
        State(f"{prefix}-xrange", "data"),
        prevent_initial_call=True,
    )
    app.clientside_callback(
        _TO_CHARTS.replace("IDS", ids),
        Output(f"{prefix}-xsync", "data"),
        Input(f"{prefix}-xrange", "data"),
        prevent_initial_call=True,
    )
    if hover:
        app.clientside_callback(
            _HOVER.replace("IDS", json.dumps(list(hover))),
            Output(f"{prefix}-xsync", "data", allow_duplicate=True),
            [Input(g, "figure") for g in hover],
            prevent_initial_call=True,
        )
