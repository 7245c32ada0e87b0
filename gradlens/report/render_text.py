"""The terminal report (rich): header, loss sparkline, findings, layers, probe sections."""

from __future__ import annotations

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from gradlens.report.build import Report, exit_code
from gradlens.report.format import duration, loss_value, number, sparkline, timestamp

__all__ = ["SEVERITY_STYLE", "STATUS_STYLE", "render_text", "report_renderable"]

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
    if report.loss:
        parts += [
            Text.assemble(
                ("loss  ", "bold"),
                sparkline(report.loss),
                f"  final {loss_value(report.run['final_loss'])}"
                f"  best {number(report.run['best_loss'])}",
            ),
            Text(),
        ]
    parts += [_findings(report), Text()]
    layers = _layers(report)
    if layers is not None:
        parts += [layers, Text()]
    for section in report.sections:
        table = Table(title=section.title, title_justify="left", show_header=False)
        table.add_column(style="bold")
        table.add_column()
        for label, value in section.rows:
            table.add_row(label, value)
        parts += [table, Text()]
    parts.append(_verdict(report))
    return Group(*parts)


def render_text(report: Report, console: Console) -> None:
    console.print(report_renderable(report))


def _header(report: Report) -> RenderableType:
    run = report.run
    status = run["status"]
    versions = ", ".join(f"{k} {v}" for k, v in (run.get("versions") or {}).items())
    lines = Text.assemble(
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
    return lines


def _findings(report: Report) -> RenderableType:
    if not report.findings:
        return Text("No findings: every rule passed.", style="green")
    table = Table(title="Findings", title_justify="left", expand=True)
    table.add_column("severity", no_wrap=True)
    table.add_column("rule", no_wrap=True)
    table.add_column("steps", no_wrap=True)
    table.add_column("layer")
    table.add_column("evidence", ratio=1)
    for f in report.findings:
        table.add_row(
            Text(f.severity, SEVERITY_STYLE[f.severity]),
            f.rule,
            f.steps,
            f.layer or "-",
            f"{f.message}: {f.evidence}",
        )
    return table


def _layers(report: Report) -> RenderableType | None:
    if not report.layers:
        return None
    table = Table(
        title=f"Layers (median over the last {report.window:.0%} of steps)", title_justify="left"
    )
    for column in ("metric", "rank", "layer", "value"):
        table.add_column(column, justify="right" if column == "value" else "left")
    for metric, title in _RANKINGS:
        for rank in ("largest", "smallest"):
            items = report.layers.get(f"{metric}_{rank}", [])[:LAYERS_SHOWN]
            for i, (layer, value) in enumerate(items):
                table.add_row(
                    title if rank == "largest" and i == 0 else "",
                    rank if i == 0 else "",
                    layer,
                    f"{value:.3g}",
                )
    return table


def _verdict(report: Report) -> Text:
    counts = report.counts()
    summary = f"{counts['error']} error(s), {counts['warning']} warning(s), {counts['info']} info"
    if exit_code(report):
        return Text(f"UNHEALTHY: {summary} (fail-on {report.fail_on}) → exit 1", style="bold red")
    return Text(f"healthy at fail-on {report.fail_on}: {summary} → exit 0", style="bold green")
