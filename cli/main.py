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
) -> None:
    """Run SCRIPT [ARGS]... unmodified and record every model and optimizer it creates.

    Options go before SCRIPT; everything after it is passed to the script.
    """
    from gradlens.instrument.watch import watch_script

    code, _ = watch_script(
        script,
        list(ctx.args),
        runs_dir=runs_dir,
        name=name,
        every=every,
        probes=probes.value,
        status=status.value,
        track_updates=updates,
    )
    raise typer.Exit(code)


@app.command("ls")
def list_runs(
    runs_dir: Annotated[Path, typer.Argument(help="Folder holding runs.")] = Path("runs"),
) -> None:
    """List the runs in RUNS_DIR: name, status, steps, start, duration."""
    from gradlens.cli.render import runs_table
    from rich.console import Console

    from gradlens.store import list_runs as find_runs

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
