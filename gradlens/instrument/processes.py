"""Processes the watched script starts: forked children leave the run alone, trainers are told.

A forked child (a fork-started DataLoader worker, a Hogwild trainer, ``os.fork()``) inherits
the parent's hooks and patches but not its writer thread: recording there would queue rows
nobody writes, and an ``atexit`` close would finish the parent's run. So every object
registered with :func:`detach_in_forked_children` has its ``forked()`` called in the child
right after the fork; the run stays the parent's.

Training in child processes (``torch.multiprocessing.spawn`` for DDP, Hogwild's
``mp.Process``) is not recorded: gradlens records the process it watches. A run that records no
step but started such processes says so (:func:`children_note`), instead of only "no step".
"""

from __future__ import annotations

import multiprocessing
import os
import weakref
from collections import Counter
from typing import Any, Protocol

__all__ = ["ChildProcesses", "children_note", "detach_in_forked_children"]


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

    def saw(self, process: Any) -> None:
        target = getattr(process, "_target", None)
        if getattr(target, "__module__", "").startswith("torch.utils.data"):
            return
        method = getattr(process, "_start_method", None)
        self.started[method or multiprocessing.get_start_method(allow_none=True) or "fork"] += 1


def children_note(children: ChildProcesses) -> str | None:
    """Why a run with no recorded step may still have trained, or None."""
    if not children.started:
        return None
    how = ", ".join(f"{n} with {method!r}" for method, n in sorted(children.started.items()))
    return (
        f"the script started child processes ({how}) and took no optimizer step itself; "
        "gradlens records the process it watches: for DDP run the workers under torchrun "
        "(docs/distributed.md), or open a gradlens.Lens in the worker function"
    )
