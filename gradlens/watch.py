"""Run an unmodified training script as ``__main__`` under a :class:`~gradlens.Lens`.

Like ``python train.py args…``: ``sys.argv`` and ``sys.path[0]`` are the script's, and the
script runs through ``runpy.run_path`` so that spawn-started DataLoader workers re-import it
by path as ``__mp_main__``. The script's exit code becomes ours; an exception still flushes
and marks the run ``failed``; Ctrl-C and SIGTERM flush and mark it ``interrupted``.

Closing the run is atomic with respect to Ctrl-C and SIGTERM (``HeldSignals`` from
``instrument.signals``): one that arrives while gradlens flushes waits until the rows and
``meta.json`` are written, then the run is marked ``interrupted`` with the signal's exit code
(130, 143) unless the script had already failed; a second Ctrl-C says how to abandon, a third
abandons.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
import traceback
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


def watch_script(script: str | Path, args: list[str], **lens_options: Any) -> tuple[int, Lens]:
    """Run ``script`` with ``args`` under a new automatic :class:`Lens`.

    Returns the script's exit code and the finished Lens (its ``run_dir`` holds the run).
    """
    path = Path(script)
    if not path.is_file():
        raise GradlensError(f"no such script: {script}")
    argv = [str(path), *args]
    if not lens_options.get("name"):
        lens_options["name"] = run_name_for(path.stem)
    lens = Lens(command=" ".join(["gradlens watch", *argv]), argv=argv, **lens_options)
    lens.start()  # before touching the process: a failure here leaves nothing to undo
    saved_argv, saved_path0 = sys.argv[:], sys.path[0] if sys.path else None
    sys.argv[:] = argv
    sys.path.insert(0, str(path.resolve().parent))
    ending = _Ending()
    previous = ending.install()
    code, status, error = 0, "finished", None
    ended: BaseException | None = None
    try:
        # absolute, as python gives a script's __file__ (a script that chdirs reads beside it)
        runpy.run_path(os.path.abspath(path), run_name="__main__")
    except BaseException as exc:  # every ending is the script's, told below
        ending.raising = False
        ended = exc
    ending.raising = False  # from here on a signal is noted, then held, never raised
    held = HeldSignals(presses=int(isinstance(ended, KeyboardInterrupt)), redeliver=False)
    try:
        with held:
            if ended is not None:
                code, status, error = _outcome(ended, path)
            first = _close(lens, status, code, error, held, ending.noted)
        if first is not None and code == 0:
            code = exit_code_for(first)
    except KeyboardInterrupt:  # the third Ctrl-C: abandon the close
        print("gradlens: abandoned; the run keeps what was written", file=sys.stderr)
        code = 130
    finally:
        ending.restore(previous)
        sys.argv[:] = saved_argv
        if saved_path0 is not None and sys.path and sys.path[0] == str(path.resolve().parent):
            sys.path.pop(0)
    return code, lens


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


def _outcome(exc: BaseException, script: Path) -> tuple[int, str, str | None]:
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


def _print_script_traceback(exc: BaseException, script: Path) -> None:
    """The traceback Python would print for the script, without gradlens/runpy frames."""
    tb: TracebackType | None = exc.__traceback__
    target = os.path.realpath(script)
    while tb is not None and os.path.realpath(tb.tb_frame.f_code.co_filename) != target:
        tb = tb.tb_next
    if tb is None and isinstance(exc, SyntaxError):  # it never ran: python prints no frame
        traceback.print_exception(type(exc), exc, None, file=sys.stderr)
        return
    traceback.print_exception(type(exc), exc, tb or exc.__traceback__, file=sys.stderr)
