"""Processes the watched script starts: forked children leave the run alone, trainers are told.

A forked child (a fork-started DataLoader worker, a Hogwild trainer, ``os.fork()``) inherits
the parent's hooks and patches but not its writer thread: recording there would queue rows
nobody writes, and an ``atexit`` close would finish the parent's run. So every object
registered with :func:`detach_in_forked_children` has its ``forked()`` called in the child
right after the fork; the run stays the parent's.

A worker started with 'spawn' (``torch.multiprocessing.spawn`` for DDP, an ``mp.Process``
of the spawn context) while ``gradlens watch`` records runs :func:`worker_command` first: it is
recorded as its own run (``gradlens.workers``). Forked trainers (Hogwild's default) are not
recorded. A run that records no step but started such processes says why
(:func:`children_note`), instead of only "no step".
"""

from __future__ import annotations

import json
import multiprocessing
import os
import weakref
from collections import Counter
from pathlib import Path
from typing import Any, Protocol

__all__ = ["ChildProcesses", "children_note", "detach_in_forked_children", "worker_command"]


class Forkable(Protocol):
    def forked(self) -> None: ...


_live: weakref.WeakSet[Any] = weakref.WeakSet()


def detach_in_forked_children(obj: Forkable) -> None:
    """Call ``obj.forked()`` in every child forked from now on (while ``obj`` lives)."""
    _live.add(obj)


def _after_fork_in_child() -> None:
    live = list(_live)
    _live.clear()
    for obj in live:
        try:
            obj.forked()
        except Exception:  # the child is the script's: never break it
            pass


os.register_at_fork(after_in_child=_after_fork_in_child)


class ChildProcesses:
    """The ``multiprocessing`` processes started while watched, by start method, but
    DataLoader workers (they load data; the training step stays in this process)."""

    def __init__(self) -> None:
        self.started: Counter[str] = Counter()
        self.workers: list[str] = []  # the runs of the spawned workers (gradlens.workers)

    def saw(self, process: Any) -> str | None:
        """Count ``process``; its start method, or None for a DataLoader worker."""
        target = getattr(process, "_target", None)
        if getattr(target, "__module__", "").startswith("torch.utils.data"):
            return None
        method = getattr(process, "_start_method", None)  # None: the default context's
        # (get_start_method() without allow_none would fix the default for the script)
        method = method or multiprocessing.get_start_method(allow_none=True)
        method = method or multiprocessing.get_all_start_methods()[0]  # the platform default
        self.started[method] += 1
        return str(method)


def worker_command(config: dict[str, Any]) -> str:
    """The line a spawned worker runs first: ``gradlens.workers.bootstrap(config)`` (a JSON
    string inside the child's ``-c`` program; interception guards it with ``try``)."""
    return f"import gradlens.workers as _gl; _gl.bootstrap({json.dumps(config)!r})"


def children_note(children: ChildProcesses, runs_dir: Path) -> str | None:
    """Why a run with no recorded step may still have trained, or None."""
    if not children.started:
        return None
    recorded = [name for name in children.workers if (runs_dir / name).is_dir()]
    if recorded:  # (a worker that took no step left no run)
        return (
            f"this process took no optimizer step; its {len(recorded)} spawned workers "
            f"that trained are recorded as runs {', '.join(recorded)}"
        )
    how = ", ".join(f"{n} with {method!r}" for method, n in sorted(children.started.items()))
    return (
        f"the script started child processes ({how}) and took no optimizer step itself; "
        "gradlens records the process it watches: for DDP run the workers under torchrun "
        "(docs/distributed.md), or open a gradlens.Lens in the worker function"
    )
