"""The page shell and its CSS (inline, so the package needs no asset files)."""

from __future__ import annotations

__all__ = ["INDEX_STRING"]

_CSS = """
body { font-family: system-ui, sans-serif; margin: 0 1.5rem 2rem; color: #222; }
.nav { display: flex; gap: 1rem; align-items: baseline; padding: .7rem 0;
       border-bottom: 1px solid #ddd; margin-bottom: .8rem; }
.nav a { color: #1f77b4; text-decoration: none; }
.nav a.active { font-weight: 600; border-bottom: 2px solid #1f77b4; }
.brand { font-weight: 700; margin-right: 1rem; }
.run-name { margin-left: auto; color: #666; }
.controls, .pickers, .select, .facts { display: flex; gap: 1rem; align-items: center;
       flex-wrap: wrap; margin: .5rem 0; }
.controls .slider { width: 260px; }
.pickers .dash-dropdown { min-width: 220px; }
.pair { display: grid; grid-template-columns: 1fr 1fr; gap: 1rem; }
.table { border-collapse: collapse; margin: .5rem 0; }
.table th, .table td { border-bottom: 1px solid #eee; padding: .3rem .7rem; text-align: left;
       vertical-align: top; }
.message { padding: .6rem .9rem; border-radius: 4px; background: #eef4fb; margin: .5rem 0; }
.message.warning { background: #fff5e0; } .message.error { background: #fde8e8; }
.status, .sev { padding: 0 .4rem; border-radius: 3px; background: #eee; }
.status.running { background: #e0f0ff; } .status.finished { background: #e3f6e3; }
.status.failed, .status.crashed, .sev.error { background: #fde0e0; }
.status.interrupted, .sev.warning { background: #fff0cc; }
.evidence { color: #555; font-size: .9em; }
.status.unhealthy { background: #eee; }
#runs-filter { width: 320px; }
.health { padding: 0 .4rem; border-radius: 3px; background: #eee; }
.health.healthy { background: #e3f6e3; } .health.warning { background: #fff0cc; }
.health.error { background: #fde0e0; font-weight: 600; } .health.pending { color: #777; }
button.link { white-space: nowrap; background: none; border: none; padding: 0;
       color: #1f77b4; cursor: pointer;
       text-decoration: underline; font: inherit; text-align: left; }
.csv-links { display: flex; gap: 1rem; font-size: .85em; color: #666; margin: .2rem 0 .8rem; }
.csv-links a { color: #1f77b4; }
details.findings > summary, details.config > summary { cursor: pointer; font-weight: 600; }
details.findings { margin: .4rem 0; }
details.findings #findings { max-height: 15rem; overflow-y: auto; }  /* charts stay in view */
.unreadable { color: #a00; }
.runs-filter { display: flex; gap: 1rem; align-items: center; margin: .4rem 0; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(480px, 1fr));
       gap: .6rem; }
.sidebar-layout { display: grid; grid-template-columns: 260px 1fr; gap: 1rem; }
.grid-note { grid-column: 1 / -1; }
.grid-section { grid-column: 1 / -1; margin: .6rem 0 0; text-transform: capitalize; }
.chart .csv { font-size: .8em; }
.sidebar input[type=text] { width: 100%; box-sizing: border-box; }
.sidebar { border-right: 1px solid #eee; padding-right: .8rem; }
.swatch { display: inline-block; width: .8em; height: .8em; border-radius: 2px;
       margin-right: .3em; vertical-align: middle; }
"""

INDEX_STRING = (
    """<!DOCTYPE html>
<html>
  <head>
    {%metas%}
    <title>{%title%}</title>
    {%favicon%}
    {%css%}
    <style>"""
    + _CSS
    + """</style>
  </head>
  <body>
    {%app_entry%}
    <footer>
      {%config%}
      {%scripts%}
      {%renderer%}
    </footer>
  </body>
</html>
"""
)
