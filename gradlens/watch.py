"""Run an unmodified training script as ``__main__`` under a :class:`~gradlens.Lens`.

Like ``python train.py args…``: ``sys.argv`` and ``sys.path[0]`` are the script's, and the
script runs through ``runpy.run_path`` so that spawn-started DataLoader workers re-import it
by path as ``__mp_main__``. A folder runs its ``__main__.py`` (``python app/``); ``-m MODULE``
runs through ``runpy.run_module`` with the cwd first on ``sys.path`` (``python -m``), so
spawned workers re-import the module by name. The script's exit code becomes ours; an
exception still flushes and marks the run ``failed``; Ctrl-C and SIGTERM flush and mark it
``interrupted``.

Closing the run is atomic with respect to Ctrl-C and SIGTERM (``HeldSignals`` from
``instrument.signals``): one that arrives while gradlens flushes waits until the rows and
``meta.json`` are written, then the run is marked ``interrupted`` with the signal's exit code
(130, 143) unless the script had already failed; a second Ctrl-C says how to abandon, a third
abandons.
"""

from __future__ import annotations

import importlib.util
import os
import runpy
import signal
import sys
import traceback
from dataclasses import dataclass
from importlib.machinery import PathFinder
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from gradlens.errors import GradlensError
from gradlens.instrument.signals import HeldSignals, exit_code_for
from gradlens.lens import Lens
from gradlens.store.meta import run_name_for, update_meta

__all__ = ["watch_script"]


class _Terminated(BaseException):
    """SIGTERM arrived: unwind the script like Ctrl-C does."""


def watch_script(
    script: str | Path | None,
    args: list[str],
    module: str | None = None,
    options: list[str] | None = None,
    **lens_options: Any,
) -> tuple[int, Lens]:
    """Run ``script`` (a file, or a folder with a ``__main__.py``), or ``module`` as
    ``python -m`` does, with ``args`` under a new automatic :class:`Lens`. ``options``: the
    watch options as typed, for the command ``meta.json`` records.

    Returns the script's exit code and the finished Lens (its ``run_dir`` holds the run).
    """
    target = _Target.of(script, module)
    argv = [target.argv0, *args]
    if not lens_options.get("name"):
        lens_options["name"] = run_name_for(target.name)
    shown = ["-m", module, *args] if module else argv  # as typed
    command = " ".join(["gradlens watch", *(options or []), *shown])
    lens = Lens(command=command, argv=shown, keep_untouched=False, **lens_options)
    lens.start()  # before touching the process: a failure here leaves nothing to undo
    saved_argv, saved_path0 = sys.argv[:], sys.path[0] if sys.path else None
    sys.argv[:] = argv
    sys.path.insert(0, target.path0)
    ending = _Ending()
    previous = ending.install()
    code, status, error = 0, "finished", None
    ended: BaseException | None = None
    try:
        target.run()
    except BaseException as exc:  # every ending is the script's, told below
        ending.raising = False
        ended = exc
    ending.raising = False  # from here on a signal is noted, then held, never raised
    held = HeldSignals(presses=int(isinstance(ended, KeyboardInterrupt)), redeliver=False)
    try:
        with held:
            if ended is not None:
                code, status, error = _outcome(ended, target.file)
            first = _close(lens, status, code, error, held, ending.noted)
        if first is not None and code == 0:
            code = exit_code_for(first)
    except KeyboardInterrupt:  # the third Ctrl-C: abandon the close
        print("gradlens: abandoned; the run keeps what was written", file=sys.stderr)
        code = 130
    finally:
        ending.restore(previous)
        sys.argv[:] = saved_argv
        if saved_path0 is not None and sys.path and sys.path[0] == target.path0:
            sys.path.pop(0)
    return code, lens


@dataclass(frozen=True)
class _Target:
    """What ``watch`` runs as ``__main__``, set up as ``python`` would."""

    name: str  # the run's default name
    argv0: str  # sys.argv[0] while it starts ('-m' as python has it while the module's
    # packages are imported; runpy then sets the module's file)
    path0: str  # sys.path[0]: the script's folder, the folder itself, or the cwd for -m
    file: str  # the file whose frames a traceback starts at
    runnable: str  # what runpy runs: an absolute path, or the module's name
    module: bool = False

    @classmethod
    def of(cls, script: str | Path | None, module: str | None) -> _Target:
        if module is not None:
            return cls._module(module)
        path = Path(script or "")
        if path.is_dir() and (path / "__main__.py").is_file():  # python DIR
            folder = os.path.abspath(path)
            main = os.path.join(folder, "__main__.py")
            return cls(path.resolve().name, str(path), folder, main, folder)
        if not path.is_file():
            raise GradlensError(f"no such script: {script}")
        # absolute, as python gives a script's __file__ (a script that chdirs reads beside it)
        file = os.path.abspath(path)
        return cls(path.stem, str(path), str(path.resolve().parent), file, file)

    @classmethod
    def _module(cls, module: str) -> _Target:
        """Found as ``python -m`` finds it, without running any package's ``__init__`` (the
        run has not started, ``sys.argv`` is still gradlens's): a missing module is one line.
        The packages' ``__init__`` run in the run, with ``sys.argv[0] == '-m'`` as python has
        it then."""
        parts = module.split(".")
        if not all(p.isidentifier() for p in parts):
            raise GradlensError(f"no module named {module!r}: not a dotted module name")
        sys.path.insert(0, os.getcwd())  # where python -m looks first
        try:
            spec = importlib.util.find_spec(parts[0])  # top level: runs nothing
        except (ImportError, ValueError):
            spec = None
        finally:
            sys.path.pop(0)
        if spec is None:
            raise GradlensError(f"no module named {parts[0]!r} (from {os.getcwd()})")
        for depth in range(2, len(parts) + 2):
            if depth > len(parts) and spec.submodule_search_locations is None:
                break
            # python -m PACKAGE runs PACKAGE.__main__
            name = ".".join(parts[:depth]) if depth <= len(parts) else f"{module}.__main__"
            locations = spec.submodule_search_locations
            found = PathFinder.find_spec(name, list(locations)) if locations else None
            if found is None:  # (a package that builds its __path__ at import: not seen)
                raise GradlensError(f"no module named {name!r} (from {os.getcwd()})")
            spec = found
        return cls(parts[-1], "-m", os.getcwd(), spec.origin or "", module, module=True)

    def run(self) -> None:
        if self.module:
            runpy.run_module(self.runnable, run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(self.runnable, run_name="__main__")


def _close(
    lens: Lens, status: str, code: int, error: str | None, held: HeldSignals, noted: list[int]
) -> int | None:
    """Close the run; a signal that came meanwhile makes a successful run ``interrupted``.

    Returns that signal (the exit code follows it, so meta and exit code always agree).
    """
    lens.close(status, exit_code=code, error=error)
    first = next(iter([*noted, *held.received]), None)
    if first is None or code != 0 or lens.run_dir is None or not lens.dist.main:
        return first
    name = "KeyboardInterrupt" if first == signal.SIGINT else signal.Signals(first).name
    update_meta(lens.run_dir, status="interrupted", exit_code=exit_code_for(first), error=name)
    return first


def _outcome(exc: BaseException, script: str) -> tuple[int, str, str | None]:
    """Exit code, status and error for a script that ended by raising ``exc``."""
    if isinstance(exc, SystemExit):
        code = _exit_code(exc.code)
        return (
            code,
            "finished" if code == 0 else "failed",
            (None if code == 0 else f"SystemExit({exc.code!r})"),
        )
    if isinstance(exc, KeyboardInterrupt):
        return 130, "interrupted", "KeyboardInterrupt"
    if isinstance(exc, _Terminated):
        return 143, "interrupted", "SIGTERM"
    _print_script_traceback(exc, script)
    return 1, "failed", f"{type(exc).__name__}: {exc}"


class _Ending:
    """SIGTERM handler: unwinds the script while it runs, only notes a signal after.

    (``HeldSignals`` takes over for the close; this covers the few instructions between.)
    SIGINT keeps Python's own handler while the script runs: ``asyncio.run`` and others
    look for it.
    """

    def __init__(self) -> None:
        self.raising = True
        self.noted: list[int] = []

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.raising:
            raise _Terminated()
        self.noted.append(signum)

    def install(self) -> Any:
        try:
            return signal.signal(signal.SIGTERM, self)
        except ValueError:  # not the main thread
            return signal.getsignal(signal.SIGTERM)

    def restore(self, previous: Any) -> None:
        try:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
        except ValueError:
            pass


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _print_script_traceback(exc: BaseException, script: str) -> None:
    """The traceback Python would print for the script, without gradlens/runpy frames."""
    tb: TracebackType | None = exc.__traceback__
    target = os.path.realpath(script) if script else None
    while tb is not None and os.path.realpath(tb.tb_frame.f_code.co_filename) != target:
        tb = tb.tb_next
    if tb is None and isinstance(exc, SyntaxError):  # it never ran: python prints no frame
        traceback.print_exception(type(exc), exc, None, file=sys.stderr)
        return
    if tb is None:  # raised before the script's file ran (a -m module's package): from there
        tb = exc.__traceback__
        while tb is not None and _ours(tb.tb_frame.f_code.co_filename):
            tb = tb.tb_next
    traceback.print_exception(type(exc), exc, tb, file=sys.stderr)


_GRADLENS_DIR = os.path.dirname(os.path.realpath(__file__))
_RUNPY = os.path.realpath(runpy.__file__)


def _ours(filename: str) -> bool:
    """A frame of gradlens, runpy or the import system (not the script's)."""
    if filename.startswith("<frozen"):
        return True
    path = os.path.realpath(filename)
    return path == _RUNPY or path.startswith(_GRADLENS_DIR + os.sep)
