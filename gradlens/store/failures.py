"""Storage failures (full or read-only disk): one warning line per run, never an exception.

A failed write must not change how the training ends. The store reports the first failure
for a run on stderr, remembers it so that the next ``meta.json`` update records it as
``storage_error``, and removes its temporary files.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

__all__ = ["describe", "remove_quietly", "storage_error", "warn_storage"]

_lock = threading.Lock()
_errors: dict[Path, str] = {}  # run folder -> the first storage failure met in this process


def describe(exc: BaseException) -> str:
    """``OSError: [Errno 28] No space left on device`` (without the file name)."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: [Errno {exc.errno}] {exc.strerror}"
    return f"{type(exc).__name__}: {exc}"


def warn_storage(run_dir: Path, what: str, exc: BaseException) -> None:
    """Report that ``what`` failed for the run in ``run_dir`` (one line per run and process)."""
    key = Path(run_dir).absolute()
    message = f"{what}: {describe(exc)}"
    with _lock:
        if key in _errors:
            return
        _errors[key] = message
    print(
        f"gradlens: storage error in {key}: {message} (training goes on; "
        "what was written stays readable)",
        file=sys.stderr,
        flush=True,
    )


def storage_error(run_dir: Path) -> str | None:
    """The first storage failure this process met for ``run_dir``, if any."""
    with _lock:
        return _errors.get(Path(run_dir).absolute())


def remove_quietly(path: Path) -> None:
    """Delete ``path`` if it is there; a failure to delete is ignored."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass
