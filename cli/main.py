"""``gradlens``: a thin typer shell over the library. Parses, calls, prints."""

from __future__ import annotations

import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from typer._click.exceptions import ClickException

from gradlens.errors import GradlensError

app = typer.Typer(
    help="Training diagnostics for PyTorch: record runs, report on them, browse them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class Preset(StrEnum):
    cheap = "cheap"
    standard = "standard"
    full = "full"


class StatusMode(StrEnum):
    auto = "auto"
    live = "live"
    plain = "plain"
    off = "off"


@app.command(
    context_settings={"allow_extra_args": True, "allow_interspersed_args": False},
)
def watch(
    ctx: typer.Context,
    script: Annotated[Path, typer.Argument(help="Training script, run as __main__.")],
    runs_dir: Annotated[
        Path | None,
        typer.Option(
            "--runs-dir", envvar="GRADLENS_DIR", help="Parent folder of runs (default: ./runs)."
        ),
    ] = None,
    name: Annotated[str | None, typer.Option(help="Run name (default: the script name).")] = None,
    every: Annotated[int, typer.Option(min=1, help="Steps between flushes to disk.")] = 50,
    probes: Annotated[Preset, typer.Option(help="Probe cost preset.")] = Preset.cheap,
    status: Annotated[StatusMode, typer.Option(help="Status line on stderr.")] = StatusMode.auto,
    updates: Annotated[
        bool,
        typer.Option(
            "--updates/--no-updates",
            help="Record update norms ‖Δθ‖ (one parameter copy per step; the main cost on CPU).",
        ),
    ] = True,
    probe: Annotated[
        list[str] | None,
        typer.Option(
            "--probe",
            help="Probe option NAME.OPTION=VALUE, e.g. hessian.every=100, hessian.k=10 "
            "(repeatable; naming a probe enables it).",
        ),
    ] = None,
) -> None:
    """Run SCRIPT [ARGS]... unmodified and record every model and optimizer it creates.

    Options go before SCRIPT; everything after it is passed to the script.
    """
    from gradlens.instrument.watch import watch_script
    from gradlens.probes import make_probes, parse_probe_options

    try:
        probe_options = parse_probe_options(probe or [])
        make_probes(probes.value, probe_options)  # validate before the script starts
    except ValueError as exc:
        raise GradlensError(str(exc)) from None
    code, _ = watch_script(
        script,
        list(ctx.args),
        runs_dir=runs_dir,
        name=name,
        every=every,
        probes=probes.value,
        status=status.value,
        track_updates=updates,
        probe_options=probe_options,
    )
    raise typer.Exit(code)


class Format(StrEnum):
    text = "text"
    markdown = "markdown"
    json = "json"
    junit = "junit"


class FailOn(StrEnum):
    warning = "warning"
    error = "error"
    never = "never"


FormatOption = Annotated[Format, typer.Option("--format", "-f", help="Output format.")]
OutputOption = Annotated[
    Path | None, typer.Option("--output", "-o", help="Write the output to FILE instead of stdout.")
]
FailOnOption = Annotated[
    FailOn | None,
    typer.Option(help="Exit 1 when a finding is at/above this level [config, else error]."),
]
ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", help="gradlens.toml or pyproject.toml (default: nearest one)."),
]
ThresholdOption = Annotated[
    list[str] | None,
    typer.Option("--threshold", "-t", help="Override a threshold: NAME=VALUE (repeatable)."),
]
SummaryOption = Annotated[
    bool,
    typer.Option(
        "--step-summary/--no-step-summary",
        help="Append markdown to $GITHUB_STEP_SUMMARY when it is set.",
    ),
]


@app.command()
def report(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    fmt: FormatOption = Format.text,
    output: OutputOption = None,
    fail_on: FailOnOption = None,
    config: ConfigOption = None,
    threshold: ThresholdOption = None,
    step_summary: SummaryOption = True,
) -> None:
    """Is this training healthy? Findings, layers and probe summaries; exit code for CI.

    Exit codes: 0 healthy (no finding at/above --fail-on), 1 findings at/above it,
    2 usage or input error (missing run, unreadable table, bad config).
    """
    from gradlens.report import build_report, exit_code, load_config
    from gradlens.store import open_run

    settings = load_config(
        config, fail_on=fail_on.value if fail_on else None, overrides=_overrides(threshold)
    )
    result = build_report(open_run(run), settings)
    _emit_report(result, fmt, output, step_summary)
    raise typer.Exit(exit_code(result))


@app.command()
def compare(
    runs: Annotated[list[Path], typer.Argument(help="Two or more run directories.")],
    fmt: FormatOption = Format.text,
    output: OutputOption = None,
    fail_on: FailOnOption = None,
    config: ConfigOption = None,
    threshold: ThresholdOption = None,
) -> None:
    """Runs side by side: losses, spikes, findings, per-layer norm differences.

    The first run is the baseline. Exit code 1 when any run has findings at/above --fail-on.
    """
    from gradlens.report import compare_runs, load_config, render_compare
    from gradlens.store import open_run

    if len(runs) < 2:
        raise GradlensError("compare needs at least two runs")
    settings = load_config(
        config, fail_on=fail_on.value if fail_on else None, overrides=_overrides(threshold)
    )
    comparison = compare_runs([open_run(r) for r in runs], settings)
    _emit(render_compare(comparison, fmt.value), output)
    raise typer.Exit(comparison.exit_code)


def _overrides(pairs: list[str] | None) -> dict[str, str]:
    out = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise GradlensError(f"--threshold expects NAME=VALUE, got {pair!r}")
        out[name.strip()] = value.strip()
    return out


def _emit_report(result: object, fmt: Format, output: Path | None, step_summary: bool) -> None:
    from gradlens.report import (
        render_json,
        render_junit,
        render_markdown,
        report_renderable,
    )

    rendered = {
        Format.text: lambda r: report_renderable(r),
        Format.markdown: render_markdown,
        Format.json: render_json,
        Format.junit: render_junit,
    }[fmt](result)
    _emit(rendered, output)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if step_summary and summary:
        with open(summary, "a", encoding="utf-8") as handle:
            handle.write(render_markdown(result))


def _emit(rendered: object, output: Path | None) -> None:
    from rich.console import Console

    if output is None:
        if isinstance(rendered, str):
            sys.stdout.write(rendered)
        else:
            Console().print(rendered)
        return
    try:
        with output.open("w", encoding="utf-8") as handle:
            if isinstance(rendered, str):
                handle.write(rendered)
            else:
                Console(file=handle, width=120, color_system=None).print(rendered)
    except OSError as exc:
        raise GradlensError(f"cannot write {output}: {exc.strerror or exc}") from None


@app.command()
def dashboard(
    runs_dir: Annotated[
        Path | None,
        typer.Argument(help="Folder holding runs (default: $GRADLENS_DIR or ./runs)."),
    ] = None,
    host: Annotated[
        str, typer.Option(help="Interface to bind (127.0.0.1: this machine only).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port.")] = 8050,
) -> None:
    """Browse runs in a web dashboard: runs, run, curvature, landscape, collapse, compare."""
    from gradlens.dashboard.serve import serve

    folder = runs_dir if runs_dir is not None else Path(os.environ.get("GRADLENS_DIR", "runs"))
    serve(folder, host=host, port=port)


@app.command("ls")
def list_runs(
    runs_dir: Annotated[
        Path | None,
        typer.Argument(help="Folder holding runs (default: $GRADLENS_DIR or ./runs)."),
    ] = None,
) -> None:
    """List the runs in RUNS_DIR: name, status, steps, start, duration."""
    from rich.console import Console

    from gradlens.cli.render import runs_table
    from gradlens.store import list_runs as find_runs

    runs_dir = runs_dir if runs_dir is not None else Path(os.environ.get("GRADLENS_DIR", "runs"))
    runs = find_runs(runs_dir)
    console = Console()
    if not runs:
        console.print(f"no runs in {runs_dir}")
        return
    console.print(runs_table(runs))


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors become one line on stderr and exit code 2."""
    try:
        result = app(args=argv, prog_name="gradlens", standalone_mode=False)
    except ClickException as exc:
        print(f"gradlens: error: {exc.format_message()}", file=sys.stderr)
        return 2
    except GradlensError as exc:
        print(f"gradlens: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a gradlens bug: one line, the traceback on request
        if os.environ.get("GRADLENS_DEBUG") == "1":
            raise
        print(
            f"gradlens: internal error: {type(exc).__name__}: {exc} "
            "(set GRADLENS_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 1
    return result if isinstance(result, int) else 0


def run() -> None:
    sys.exit(main())
