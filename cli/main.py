"""``gradlens``: a thin typer shell over the library. Parses, calls, prints.

Exit codes: what the command decides (0/1, or the script's for ``watch``); 2 for any usage or
input error, always told in one line on stderr.
"""

from __future__ import annotations

import os
import socket
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

from gradlens._version import __version__
from gradlens.cli.probe_options import validate_probe_options
from gradlens.cli.runs import default_runs_dir, resolve_run, runs_folder
from gradlens.errors import GradlensError

if TYPE_CHECKING:
    from gradlens.report import Report
    from gradlens.store import Run

# click's ClickException (usage errors), reached through typer's public ``BadParameter``: typer
# vendors click as a private module from 0.26 on and depends on click itself before that.
_USAGE_ERRORS = tuple(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")

# What reading a run may raise when one of its files is bad: that run is unreadable (exit 2).
UNREADABLE = (GradlensError, ValueError, OSError, OverflowError)

MAX_EVERY = 1_000_000


class _Command(TyperCommand):
    """Help in words: ``RUN`` in the usage line (not ``{RUN}``), no ``<path>``/``<bool>`` type
    column for arguments and flags (their metavar or the flag itself says it)."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _wordy(super().get_params(ctx))

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                pieces.append(param.metavar or (param.name or "").upper())
        return pieces


class _Group(TyperGroup):
    """The top level: no ``<bool>`` next to ``--version`` and ``--help``."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _wordy(super().get_params(ctx))


def _wordy(params: list[Any]) -> list[Any]:
    for param in params:
        wordy = param.param_type_name == "argument" or getattr(param, "is_flag", False)
        if wordy and hasattr(param, "display_type_rich"):  # typer >= 0.26's type column
            param.display_type_rich = _no_type
    return params


def _no_type(ctx: Any) -> None:
    return None


app = typer.Typer(
    cls=_Group,
    help="Training diagnostics for PyTorch: record runs, report on them, browse them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"gradlens {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Training diagnostics for PyTorch: record runs, report on them, browse them."""


class Preset(StrEnum):
    cheap = "cheap"
    standard = "standard"
    full = "full"


class UpdatesFrom(StrEnum):
    """``gradlens.capture.norms.UPDATE_SOURCES`` (tested equal; the CLI starts without torch)."""

    copy = "copy"
    optimizer = "optimizer"


class StatusMode(StrEnum):
    auto = "auto"
    live = "live"
    plain = "plain"
    off = "off"


RunsDirOption = Annotated[
    Path | None,
    typer.Option(
        "--runs-dir",
        envvar="GRADLENS_DIR",
        metavar="DIR",
        show_default=False,
        help="Folder of runs (default: $GRADLENS_DIR, else ./runs).",
    ),
]


@app.command(
    cls=_Command,
    context_settings={"allow_extra_args": True, "allow_interspersed_args": False},
)
def watch(
    ctx: typer.Context,
    script: Annotated[
        str | None,
        typer.Argument(
            metavar="SCRIPT [ARGS]...",
            show_default=False,
            help="Training script (or a folder with a __main__.py), run as __main__.",
        ),
    ] = None,
    module: Annotated[
        str | None,
        typer.Option(
            "--module",
            "-m",
            metavar="MODULE",
            show_default=False,
            help="Run MODULE as `python -m MODULE` does instead of a script; everything after "
            "it is passed to the module.",
        ),
    ] = None,
    runs_dir: RunsDirOption = None,
    name: Annotated[
        str | None,
        typer.Option(
            metavar="NAME", help="Run name (default: the script's name; NAME-2… if taken)."
        ),
    ] = None,
    every: Annotated[
        int,
        typer.Option(
            metavar="N",
            min=1,
            max=MAX_EVERY,
            help="Steps between flushes to disk.",
        ),
    ] = 50,
    probes: Annotated[
        Preset, typer.Option(metavar="cheap|standard|full", help="Probe cost preset.")
    ] = Preset.cheap,
    status: Annotated[
        StatusMode,
        typer.Option(
            metavar="auto|live|plain|off",
            help="Status line on stderr (plain: a line now and then, for logs; off: none, "
            "and no closing summary).",
        ),
    ] = StatusMode.auto,
    updates: Annotated[
        bool,
        typer.Option(
            "--updates/--no-updates",
            help="Record update norms ‖Δθ‖ (one parameter copy per sampled step).",
        ),
    ] = True,
    updates_from: Annotated[
        UpdatesFrom,
        typer.Option(
            metavar="copy|optimizer",
            help="Where ‖Δθ‖ comes from: a copy of θ held over a sampled step (fewest kernels), "
            "or the optimizer's state (SGD, Adam, AdamW: no copy; others use the copy).",
        ),
    ] = UpdatesFrom.copy,
    param_every: Annotated[
        int,
        typer.Option(
            metavar="N",
            min=1,
            max=MAX_EVERY,
            help="Steps between samples of ‖θ‖ and ‖Δθ‖ (gradient norms: every step).",
        ),
    ] = 10,
    softmax_every: Annotated[
        int,
        typer.Option(
            metavar="N",
            min=1,
            max=MAX_EVERY,
            help="Steps between samples of the softmax signals and gradient/weight cosines.",
        ),
    ] = 20,
    probe: Annotated[
        list[str] | None,
        typer.Option(
            "--probe",
            metavar="NAME.OPTION=VALUE",
            show_default=False,
            help="Probe option, e.g. hessian.every=100, hessian.k=10 "
            "(repeatable; naming a probe enables it).",
        ),
    ] = None,
) -> None:
    """Run SCRIPT [ARGS]... (or -m MODULE [ARGS]...) unmodified and record every model and
    optimizer it creates.

    Options go before SCRIPT or -m MODULE; everything after it is passed to the script.
    """
    args = [*([script] if script is not None else []), *ctx.args]
    if module is None:
        if not args:
            raise typer.BadParameter("name a SCRIPT to run (or -m MODULE)", param_hint="SCRIPT")
        script, args = args[0], args[1:]
    probe_options = validate_probe_options(probes.value, probe or [])
    from gradlens.watch import watch_script  # torch: only once the command line is good

    start_dir = Path.cwd()  # the commands printed at the end are relative to it (the
    code, lens = watch_script(  # script may os.chdir)
        script if module is None else None,
        args,
        module=module,
        options=_typed_options(ctx),
        runs_dir=runs_dir,
        name=name,
        every=every,
        probes=probes.value,
        status=status.value,
        track_updates=updates,
        updates_from=updates_from.value,
        param_every=param_every,
        softmax_every=softmax_every,
        cos_every=softmax_every,
        probe_options=probe_options,
    )
    if status is not StatusMode.off:
        _next_steps(lens, start_dir)
    raise typer.Exit(code)


def _typed_options(ctx: typer.Context) -> list[str]:
    """watch's options as typed on the command line (meta.json's command repeats them)."""
    out: list[str] = []
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name or "")
        if param.param_type_name != "option" or param.name == "module":
            continue
        if source is None or source.name != "COMMANDLINE":
            continue
        value = ctx.params[param.name or ""]
        opts, secondary = list(param.opts), list(param.secondary_opts)
        if getattr(param, "is_flag", False):
            out.append(opts[0] if value or not secondary else secondary[0])
            continue
        for item in value if param.multiple else [value]:
            out += [opts[0], str(getattr(item, "value", item))]
    return out


def _next_steps(lens: Any, start_dir: Path) -> None:
    """The run's numbers (as ``report`` defines them) and the two commands to look at it."""
    run_dir = getattr(lens, "run_dir", None)
    dist = getattr(lens, "dist", None)
    if run_dir is None or (dist is not None and not getattr(dist, "main", True)):
        return
    if getattr(lens, "forked_child", False):  # the script's os.fork() child ran to its end
        return
    try:
        from gradlens.report.format import loss_value
        from gradlens.report.summary import DEFINITIONS, summarize
        from gradlens.store import open_run

        summary = summarize(open_run(run_dir), findings=False)
        numbers = (
            f"final loss {loss_value(summary.final_loss)} ({DEFINITIONS['final_loss']}); "
            f"steps with a spike: {summary.loss_spike_steps} loss, "
            f"{summary.grad_spike_steps} gradient; non-finite steps: {summary.nonfinite_steps}"
        )
        print(f"gradlens: {summary.name}: {numbers}", file=sys.stderr)
    except Exception:  # the training's exit code stands whatever happens here
        pass
    run_dir = Path(run_dir)
    print(
        f"gradlens: look at it:  gradlens report {_shell(run_dir, start_dir)}\n"
        f"                       gradlens dashboard {_shell(run_dir.parent, start_dir)}",
        file=sys.stderr,
    )


def _shell(path: Path, start_dir: Path) -> str:
    """``path`` relative to ``start_dir`` (where the command was typed) when inside it,
    quoted for a shell."""
    import shlex

    try:
        path = path.resolve().relative_to(start_dir.resolve())
    except (ValueError, OSError):
        pass
    return shlex.quote(str(path))


class Format(StrEnum):
    text = "text"
    markdown = "markdown"
    json = "json"
    junit = "junit"


class FailOn(StrEnum):
    warning = "warning"
    error = "error"
    never = "never"


RunArgument = Annotated[
    str,
    typer.Argument(
        metavar="RUN", help="A run folder, or a run's name in --runs-dir.", show_default=False
    ),
]
FormatOption = Annotated[
    Format,
    typer.Option("--format", "-f", metavar="text|markdown|json|junit", help="Output format."),
]
OutputOption = Annotated[
    Path | None,
    typer.Option(
        "--output",
        "-o",
        metavar="FILE",
        show_default=False,
        help="Write the output to FILE (default, or '-': stdout).",
    ),
]
FailOnOption = Annotated[
    FailOn | None,
    typer.Option(
        metavar="warning|error|never",
        show_default=False,
        help="Exit 1 when a finding is at/above this level (default: the config's, else error).",
    ),
]
ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        metavar="FILE",
        show_default=False,
        help="gradlens.toml or pyproject.toml (default: the nearest one).",
    ),
]
ThresholdOption = Annotated[
    list[str] | None,
    typer.Option(
        "--threshold",
        "-t",
        metavar="NAME=VALUE",
        show_default=False,
        help="Override a threshold (repeatable).",
    ),
]
SummaryOption = Annotated[
    bool,
    typer.Option(
        "--step-summary/--no-step-summary",
        help="Append markdown to $GITHUB_STEP_SUMMARY when it is set.",
    ),
]


@app.command(cls=_Command)
def report(
    run: RunArgument,
    runs_dir: RunsDirOption = None,
    fmt: FormatOption = Format.text,
    output: OutputOption = None,
    fail_on: FailOnOption = None,
    config: ConfigOption = None,
    threshold: ThresholdOption = None,
    step_summary: SummaryOption = True,
) -> None:
    """Is this training healthy? Findings, layers and probe summaries; exit code for CI.

    Exit codes: 0 healthy (no finding at/above --fail-on), 1 findings at/above it,
    2 usage or input error (missing or unreadable run, bad option or config).
    """
    from gradlens.report import build_report, exit_code, load_config

    settings = load_config(
        config, fail_on=fail_on.value if fail_on else None, overrides=_overrides(threshold)
    )
    opened = _open(run, runs_dir)
    result = _read(run, lambda: build_report(opened, settings))
    _emit_report(result, fmt, output, step_summary)
    raise typer.Exit(exit_code(result))


@app.command(cls=_Command)
def compare(
    runs: Annotated[
        list[str],
        typer.Argument(
            metavar="RUN_A RUN_B [RUN]...",
            help="Two or more runs (folders or names in --runs-dir); the first is the baseline.",
            show_default=False,
        ),
    ],
    runs_dir: RunsDirOption = None,
    fmt: FormatOption = Format.text,
    output: OutputOption = None,
    fail_on: FailOnOption = None,
    config: ConfigOption = None,
    threshold: ThresholdOption = None,
) -> None:
    """Runs side by side: losses, spikes, findings, per-layer norm differences.

    The first run is the baseline. Exit code 1 when any run has findings at/above --fail-on.
    """
    from gradlens.report import compare_runs, render_compare

    if len(runs) < 2:
        raise GradlensError("compare needs at least two runs")
    from gradlens.report import load_config

    settings = load_config(
        config, fail_on=fail_on.value if fail_on else None, overrides=_overrides(threshold)
    )
    opened = [_open(r, runs_dir) for r in runs]
    reports = [_read(arg, lambda r=r: _build(r, settings)) for arg, r in zip(runs, opened)]
    comparison = _read(", ".join(runs), lambda: compare_runs(opened, settings, reports=reports))
    _emit(render_compare(comparison, fmt.value), output)
    raise typer.Exit(comparison.exit_code)


def _build(run: Run, settings: Any) -> Report:
    from gradlens.report import build_report

    return build_report(run, settings)


def _open(argument: str, runs_dir: Path | None) -> Run:
    from gradlens.store import open_run

    path = resolve_run(argument, runs_dir)
    return _read(argument, lambda: open_run(path))


def _read(argument: str, read: Any) -> Any:
    """``read()``; a bad file in the run (meta.json, a table) becomes one line and exit 2."""
    try:
        return read()
    except GradlensError:
        raise
    except UNREADABLE as exc:
        raise GradlensError(f"run {argument}: unreadable ({_reason(exc)})") from None


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _overrides(pairs: list[str] | None) -> dict[str, str]:
    out = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise GradlensError(f"--threshold expects NAME=VALUE, got {pair!r}")
        out[name.strip()] = value.strip()
    return out


def _emit_report(result: Report, fmt: Format, output: Path | None, step_summary: bool) -> None:
    from gradlens.report import render_json, render_junit, render_markdown, report_renderable

    rendered = {
        Format.text: report_renderable,
        Format.markdown: render_markdown,
        Format.json: render_json,
        Format.junit: render_junit,
    }[fmt](result)
    _emit(rendered, output)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if step_summary and summary:
        try:
            with open(summary, "a", encoding="utf-8") as handle:
                handle.write(render_markdown(result))
        except OSError as exc:
            raise GradlensError(
                f"cannot append to $GITHUB_STEP_SUMMARY ({summary}): {exc.strerror or exc} "
                "(or pass --no-step-summary)"
            ) from None


def _emit(rendered: object, output: Path | None) -> None:
    from rich.console import Console

    if output is None or str(output) == "-":
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
                Console(file=handle, width=100, color_system=None).print(rendered)
    except OSError as exc:
        raise GradlensError(f"cannot write {output}: {exc.strerror or exc}") from None


@app.command(cls=_Command)
def dashboard(
    runs_dir: Annotated[
        Path | None,
        typer.Argument(
            metavar="[DIR]",
            show_default=False,
            help="Folder of runs (default: $GRADLENS_DIR, else ./runs).",
        ),
    ] = None,
    host: Annotated[
        str, typer.Option(metavar="HOST", help="Interface to bind (127.0.0.1: this machine only).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(metavar="PORT", min=1, max=65535, help="Port.")] = 8050,
) -> None:
    """Browse runs in a web dashboard: runs, run, curvature, landscape, collapse, compare."""
    folder = runs_folder(default_runs_dir(runs_dir))
    check_bindable(host, port)
    from gradlens.dashboard.serve import serve

    try:
        serve(folder, host=host, port=port)
    except SystemExit as exc:  # werkzeug exits 1 when it cannot bind after all
        if exc.code not in (None, 0):
            raise GradlensError(f"cannot serve on {host}:{port}") from None


def check_bindable(host: str, port: int) -> None:
    """A one-line ``GradlensError`` unless ``host`` resolves and ``port`` is free on it."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise GradlensError(f"--host {host}: unknown host ({reason})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
        try:
            probe.bind(address)
        except OSError as exc:
            raise GradlensError(
                f"cannot serve on {host}:{port}: {exc.strerror or exc} (choose another --port)"
            ) from None


@app.command("ls", cls=_Command)
def list_runs(
    runs_dir: Annotated[
        Path | None,
        typer.Argument(
            metavar="[DIR]",
            show_default=False,
            help="Folder of runs (default: $GRADLENS_DIR, else ./runs).",
        ),
    ] = None,
    config: ConfigOption = None,
    threshold: ThresholdOption = None,
) -> None:
    """List the runs in DIR: name, status, steps, final loss, health, start, duration.

    Health is the worst finding of `gradlens report` (same config and thresholds).
    """
    from rich.console import Console
    from rich.text import Text

    from gradlens.cli.render import list_entries, runs_table
    from gradlens.report import load_config

    folder = runs_folder(default_runs_dir(runs_dir))
    settings = load_config(config, overrides=_overrides(threshold))
    entries = list_entries(folder, UNREADABLE, settings)
    console = Console()
    if not console.is_terminal:  # piped (grep, awk): one line per run, however long its name
        console = Console(width=1000)
    if not entries:
        console.print(Text(f"no runs in {folder}"))
        return
    console.print(runs_table(entries))


def _module_args(args: list[str]) -> list[str]:
    """``watch [OPTIONS] -m MODULE ARGS…``: ARGS are the module's, as after ``python -m``
    (an ``--name`` among them is not watch's), so option parsing stops after MODULE."""
    if "watch" not in args:
        return args
    at = args.index("watch") + 1
    command = typer.main.get_command(app).commands["watch"]  # type: ignore[attr-defined]
    takes_value = {
        name
        for param in command.params
        if getattr(param, "opts", None) and not getattr(param, "is_flag", True)
        for name in param.opts
    }
    while at < len(args):
        token = args[at]
        if token in ("-m", "--module"):
            return args if at + 1 >= len(args) else [*args[: at + 2], "--", *args[at + 2 :]]
        if token.startswith("--module=") or (token.startswith("-m") and len(token) > 2):
            return [*args[: at + 1], "--", *args[at + 1 :]]
        if not token.startswith("-") or token == "--":
            return args  # the script: the rest is its own
        at += 2 if token in takes_value else 1
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors become one line on stderr and exit code 2."""
    args = _module_args(sys.argv[1:] if argv is None else list(argv))
    if not args:  # the help, and the exit code of a usage error (no command given)
        app(args=["--help"], prog_name="gradlens", standalone_mode=False)
        return 2
    try:
        result = app(args=args, prog_name="gradlens", standalone_mode=False)
    except _USAGE_ERRORS as exc:
        message = exc.format_message().strip()  # type: ignore[attr-defined]
        if message:
            print(f"gradlens: error: {_one_line(message)}", file=sys.stderr)
        return 2
    except GradlensError as exc:
        print(f"gradlens: error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a gradlens bug: one line, the traceback on request
        if os.environ.get("GRADLENS_DEBUG") == "1":
            raise
        print(
            f"gradlens: internal error: {type(exc).__name__}: {_one_line(str(exc))} "
            "(set GRADLENS_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 1
    return result if isinstance(result, int) else 0


def _one_line(message: str) -> str:
    # typer >= 0.26 validates through pydantic, whose messages start with its error kind
    return " ".join(message.replace("Value error, ", "").split())


def run() -> None:
    sys.exit(main())
