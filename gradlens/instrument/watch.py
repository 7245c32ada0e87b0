"""Run an unmodified training script as ``__main__`` under a :class:`~gradlens.Lens`.

Like ``python train.py args…``: ``sys.argv`` and ``sys.path[0]`` are the script's, and the
script runs through ``runpy.run_path`` so that spawn-started DataLoader workers re-import it
by path as ``__mp_main__``. The script's exit code becomes ours; an exception still flushes
and marks the run ``failed``; Ctrl-C and SIGTERM flush and mark it ``interrupted``.
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
from gradlens.lens import Lens
from gradlens.store.meta import run_name_for

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
    term = _SigTerm()
    previous_term = term.install()
    code, status, error = 0, "finished", None
    try:
        runpy.run_path(str(path), run_name="__main__")
    except SystemExit as exc:
        code = _exit_code(exc.code)
        status = "finished" if code == 0 else "failed"
        error = None if code == 0 else f"SystemExit({exc.code!r})"
    except KeyboardInterrupt:
        code, status, error = 130, "interrupted", "KeyboardInterrupt"
    except _Terminated:
        code, status, error = 143, "interrupted", "SIGTERM"
    except BaseException as exc:
        _print_script_traceback(exc, path)
        code, status, error = 1, "failed", f"{type(exc).__name__}: {exc}"
    finally:
        term.raising = False  # a SIGTERM now (torchrun stopping the other ranks) must not
        lens.close(status, exit_code=code, error=error)  # cut the flush short
        signal.signal(signal.SIGTERM, previous_term)
        sys.argv[:] = saved_argv
        if saved_path0 is not None and sys.path and sys.path[0] == str(path.resolve().parent):
            sys.path.pop(0)
    if term.deferred and code == 0:
        code = 143
    return code, lens


class _SigTerm:
    """SIGTERM handler: unwinds the script while it runs, is only noted while gradlens closes."""

    def __init__(self) -> None:
        self.raising = True
        self.deferred = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.raising:
            raise _Terminated()
        self.deferred = True

    def install(self) -> Any:
        try:
            return signal.signal(signal.SIGTERM, self)
        except ValueError:  # not the main thread
            return signal.getsignal(signal.SIGTERM)


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
    traceback.print_exception(type(exc), exc, tb or exc.__traceback__, file=sys.stderr)
