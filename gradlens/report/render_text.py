"""The terminal report (rich): header, loss sparkline, findings, layers, probe sections.

Readable at 80 columns (pipes, CI logs): the sparkline has a line of its own, each finding is a
line of facts with its evidence wrapped below it. Every string from the run (names, layers,
commands) goes through :class:`~rich.text.Text`, so rich markup in it is printed, not obeyed.
"""

from __future__ import annotations

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from gradlens.report.build import Report, exit_code
from gradlens.report.format import duration, loss_value, number, sparkline, timestamp
from gradlens.report.sampling import sampling_note
from gradlens.report.summary import DEFINITIONS, RunSummary, health_text

__all__ = [
    "SEVERITY_STYLE",
    "STATUS_STYLE",
    "health_renderable",
    "layer_rows",
    "layers_title",
    "render_text",
    "report_renderable",
    "verdict_text",
]

SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}
STATUS_STYLE = {
    "finished": "green",
    "running": "cyan",
    "failed": "red",
    "interrupted": "yellow",
    "crashed": "bold red",
}

_RANKINGS = (
    ("grad_norm", "gradient norm"),
    ("update_ratio", "‖Δθ‖/‖θ‖"),
)
LAYERS_SHOWN = 3


def report_renderable(report: Report) -> RenderableType:
    parts: list[RenderableType] = [_header(report), Text()]
    parts += [_numbers(report.summary, report.loss), Text()]
    parts += [_findings(report), Text()]
    layers = _layers(report)
    if layers is not None:
        parts += [layers, Text()]
    for section in report.sections:
        table = Table(title=section.title, title_justify="left", show_header=False)
        table.add_column(style="bold", ratio=2)
        table.add_column(ratio=3)
        for label, value in section.rows:
            table.add_row(Text(label), Text(value))
        parts += [table, Text()]
    note = sampling_note(report.sampling)
    if note:
        parts += [Text(f"sampled: {note} (the rest every step)", style="dim"), Text()]
    parts.append(_verdict(report))
    return Group(*parts)


def render_text(report: Report, console: Console) -> None:
    console.print(report_renderable(report))


def _header(report: Report) -> RenderableType:
    run = report.run
    status = run["status"]
    versions = ", ".join(f"{k} {v}" for k, v in (run.get("versions") or {}).items())
    return Text.assemble(
        ("gradlens report  ", "bold"),
        (run["name"], "bold magenta"),
        "  ",
        (status, STATUS_STYLE.get(status, "")),
        "\n",
        f"steps {run['steps']}  ·  duration {duration(run['duration_s'])}  ·  "
        f"started {timestamp(run['start_time'])}  ·  device {run.get('device') or '-'}\n",
        f"{versions}\n" if versions else "",
        (f"{run.get('command') or ''}", "dim"),
    )


def _numbers(summary: RunSummary, curve: list[float]) -> Text:
    """The loss curve on a line of its own, then the numbers every command shows."""
    text = Text()
    if curve:
        text.append("loss  ", "bold").append(sparkline(curve)).append("\n")
    text.append("final loss ", "bold").append(loss_value(summary.final_loss))
    text.append(f" ({DEFINITIONS['final_loss']})  ·  ", "dim")
    text.append("best ", "bold").append(number(summary.best_loss))
    text.append(f" ({DEFINITIONS['best_loss']})\n", "dim")
    text.append("steps with a spike ", "bold")
    text.append(f"{summary.loss_spike_steps} loss, {summary.grad_spike_steps} gradient")
    text.append("  ·  ")
    text.append("non-finite steps ", "bold").append(str(summary.nonfinite_steps))
    return text


def _findings(report: Report) -> RenderableType:
    if not report.findings:
        skipped = [r.rule for r in report.rules if r.status == "skipped"]
        if not skipped:
            return Text("No findings: every rule passed.", style="green")
        return Text(  # a rule without its data is skipped, never passed
            f"No findings; {len(skipped)} rule(s) skipped for lack of data: {', '.join(skipped)}.",
            style="yellow",
        )
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True, width=7)
    grid.add_column()
    for f in report.findings:
        facts = Text.assemble((f.rule, "bold"), f"  steps {f.steps}")
        if f.layer:
            facts.append("  ").append(f.layer, "magenta")
        grid.add_row(Text(f.severity, SEVERITY_STYLE[f.severity]), facts)
        grid.add_row(Text(), Text(f"{f.message}: {f.evidence}"))
    return Group(Text("Findings", style="bold"), grid)


def layer_rows(report: Report) -> list[tuple[str, str, str, str]]:
    """The layer rankings as (metric, rank, layer, value) rows, the metric and rank said once;
    text and markdown print the same rows."""
    rows = []
    for metric, title in _RANKINGS:
        first = True
        for rank in ("largest", "smallest"):
            items = report.layers.get(f"{metric}_{rank}", [])[:LAYERS_SHOWN]
            for i, (layer, value) in enumerate(items):
                rows.append((title if first else "", rank if i == 0 else "", layer, f"{value:.3g}"))
                first = False
        broken = report.layers.get(f"{metric}_nonfinite", [])
        if broken:
            names = ", ".join(layer for layer, _ in broken[:LAYERS_SHOWN])
            more = len(broken) - LAYERS_SHOWN
            shown = names + (f" and {more} more" if more > 0 else "")
            rows.append((title if first else "", "non-finite", shown, "NaN/Inf"))
    return rows


def layers_title(report: Report) -> str:
    return f"Layers (median over the last {report.window:.0%} of steps)"


def _layers(report: Report) -> RenderableType | None:
    if not report.layers:
        return None
    table = Table(title=layers_title(report), title_justify="left")
    table.add_column("metric", no_wrap=True)
    table.add_column("rank", no_wrap=True)
    table.add_column("layer", ratio=1)
    table.add_column("value", justify="right", no_wrap=True)
    for metric, rank, layer, value in layer_rows(report):
        table.add_row(metric, rank, Text(layer), value)
    return table


def verdict_text(report: Report) -> str:
    """``healthy: no findings …``, ``passed at fail-on error: no errors, 2 warnings …``,
    ``UNHEALTHY: 1 error …``: "healthy" only when nothing reached warning."""
    health = health_text(report.counts())
    if exit_code(report):
        return f"UNHEALTHY: {health} (fail-on {report.fail_on}) → exit 1"
    if report.worst in (None, "info"):
        return f"healthy: {health} (fail-on {report.fail_on}) → exit 0"
    return f"passed at fail-on {report.fail_on}: {health} → exit 0"


def _verdict(report: Report) -> Text:
    style = "bold red" if exit_code(report) else "bold green"
    if not exit_code(report) and report.worst in ("warning", "error"):
        style = "bold yellow"
    return Text(verdict_text(report), style=style)


def health_renderable(summary: RunSummary) -> Text:
    """The health cell of ``ls`` and ``compare``: coloured by the worst finding."""
    return Text(summary.health, SEVERITY_STYLE.get(summary.worst or "", "green"))
