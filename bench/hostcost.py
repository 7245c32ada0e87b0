"""Where gradlens's host time goes, for ``bench/overhead.py`` (bench-only instrumentation).

:class:`HostTime` times every entry point gradlens runs on the training thread (interception
events, optimizer step hooks, root-module calls, discovery) and the writer thread's CPU time.
On a GPU the hook time is what the host spends in Python and kernel launches; on the CPU it also
includes the kernels themselves (they run on the host). :func:`accelerator_path` switches off
the two CPU-only shortcuts (BLAS norms of large tensors, exact non-finite counts), so a
dispatch count on the CPU is the op sequence an accelerator runs.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterator
from typing import Any

from gradlens.capture.model_calls import ModelCalls
from gradlens.capture.norms import NormSignal
from gradlens.capture.steps import StepCapture
from gradlens.functional.norms import NormPlan
from gradlens.instrument import discovery, interception
from gradlens.store.writer import RunWriter

# (owner, attribute) of every gradlens entry point on the training thread.
ENTRY_POINTS: tuple[tuple[Any, str], ...] = (
    (interception, "_emit"),
    (StepCapture, "pre_step"),
    (StepCapture, "post_step"),
    (ModelCalls, "before"),
    (ModelCalls, "after"),
    (discovery.ModuleDiscovery, "_note"),
)


class HostTime:
    """``with HostTime() as host:`` around creating and running a Lens: ``host.hooks`` and
    ``host.writer`` are seconds on the training thread inside gradlens and of writer-thread CPU.
    Patch before the Lens exists (it binds its hooks at start)."""

    def __init__(self) -> None:
        self.hooks = 0.0
        self.writer = 0.0
        self._depth = 0
        self._saved: list[tuple[Any, str, Any]] = []

    def __enter__(self) -> HostTime:
        for owner, name in ENTRY_POINTS:
            self._wrap(owner, name, self._timed)
        self._wrap(RunWriter, "_loop", self._thread_cpu)
        return self

    def __exit__(self, *exc: object) -> None:
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)
        self._saved.clear()

    def _wrap(self, owner: Any, name: str, make: Any) -> None:
        original = getattr(owner, name)
        self._saved.append((owner, name, original))
        setattr(owner, name, functools.wraps(original)(make(original)))

    def _timed(self, original: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if self._depth:  # nested entry: counted by the outer one
                return original(*args, **kwargs)
            self._depth += 1
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.hooks += time.perf_counter() - start
                self._depth -= 1

        return timed

    def _thread_cpu(self, original: Any) -> Any:
        def loop(*args: Any, **kwargs: Any) -> Any:
            start = time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                self.writer += time.thread_time() - start

        return loop


@contextlib.contextmanager
def accelerator_path() -> Iterator[None]:
    """Lenses created inside run the accelerator's norm and non-finite code on the CPU."""
    saved = NormPlan.BLAS_MIN_NUMEL, NormSignal.CPU_COUNTS
    NormPlan.BLAS_MIN_NUMEL, NormSignal.CPU_COUNTS = 1 << 62, False
    try:
        yield
    finally:
        NormPlan.BLAS_MIN_NUMEL, NormSignal.CPU_COUNTS = saved
