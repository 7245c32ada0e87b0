"""One CUDA-graph replay per step for the gradient norms (opt-in: ``GRADLENS_CUDA_GRAPHS=1``).

An unsampled step's device work is one ``_foreach_norm`` over the gradients and one ``stack``
(``functional.norms.NormPlan``). A GPU training step is usually bound by the host launching
kernels, and most of that work's cost is host-side: the launches and the two tensor lists
handed to them. Captured once as a CUDA graph, it is a single replay.

A graph reads fixed addresses. It is replayed only while every gradient lives where it lived
at capture (``data_ptr``\\ s, checked each step; the caching allocator hands ``set_to_none``
gradients back at the same addresses in steady state, and ``zero_grad(set_to_none=False)``
keeps them); on any other step the norms run eagerly, and once the addresses have held for
``WARM`` steps a new graph is captured (at most ``MAX_CAPTURES`` in a run, then eager for
good). A capture or a replay that fails also means eager for good. The replayed output is the
graph's own buffer: it must be consumed (copied into the step's row) before the next call.

Off by default until measured on a GPU (``bench/overhead.py``'s ``graphs`` column); never on
the CPU, under an enclosing capture, for sharded parameters (FSDP2), or for parameters of
several devices.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["NormReplay", "cuda_capture", "graphs_asked", "graphs_enabled"]

Norms = Callable[[Sequence[Tensor]], Tensor]
Capture = Callable[[Norms, Sequence[Tensor]], tuple[Callable[[], None], Tensor]]


def graphs_asked() -> bool:
    """``GRADLENS_CUDA_GRAPHS=1`` (read when a recorder is made; ``meta.json`` says it too)."""
    return os.environ.get("GRADLENS_CUDA_GRAPHS") == "1"


def graphs_enabled(device: torch.device) -> bool:
    """Graphs asked for, and a CUDA device."""
    return graphs_asked() and device.type == "cuda"


def cuda_capture(norms: Norms, tensors: Sequence[Tensor]) -> tuple[Callable[[], None], Tensor]:
    """Capture ``norms(tensors)`` as a CUDA graph: (its replay, its output buffer).

    Captured on a side stream ordered after the current one, without the device
    synchronisation and cache flush of ``torch.cuda.graph`` (the training's cached memory stays
    cached). ``thread_local``: other threads (data loaders, gradlens's writer) are not
    disturbed; this thread does nothing else until the capture ends.
    """
    device = tensors[0].device
    current = torch.cuda.current_stream(device)
    side = torch.cuda.Stream(device=device)
    side.wait_stream(current)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(side):
        norms(tensors)  # warm-up outside the graph (lazy initialisation allocates)
        graph.capture_begin(capture_error_mode="thread_local")
        try:
            out = norms(tensors)
        finally:
            graph.capture_end()
    current.wait_stream(side)
    return graph.replay, out


class NormReplay:
    """``norms(tensors)``, replayed from a CUDA graph while the tensors' addresses hold.

    Example (any ``capture`` with ``cuda_capture``'s contract; on the CPU a stand-in)::

        replay = NormReplay(plan)
        gnorm = replay(grads)  # eager until the addresses held for WARM steps
    """

    WARM = 2  # steps the addresses must hold before a capture
    MAX_CAPTURES = 4  # captures in a run (addresses that keep moving: eager)

    def __init__(self, norms: Norms, capture: Capture = cuda_capture) -> None:
        self.norms = norms
        self._capture = capture
        self._graph: tuple[Callable[[], None], Tensor] | None = None
        self._addresses: tuple[int, ...] | None = None  # what the graph reads
        self._last: tuple[int, ...] | None = None  # the previous step's addresses
        self._held = 0  # steps in a row at ``_last``
        self.captures = 0
        self.replays = 0
        self.broken = False  # a capture failed: eager for good

    def __call__(self, tensors: Sequence[Tensor]) -> Tensor:
        addresses = tuple([t.data_ptr() for t in tensors])
        if self._graph is not None and addresses == self._addresses:
            return self._replay(tensors)
        self._held = self._held + 1 if addresses == self._last else 0
        self._last = addresses
        if self._held >= self.WARM and self._may_capture():
            self._graph = None  # its memory goes back before the new capture allocates
            try:
                self._graph = self._capture(self.norms, tensors)
            except Exception:  # an op that cannot be captured: eager, as before
                self.broken = True
                return self.norms(tensors)
            self._addresses = addresses
            self.captures += 1
            return self._replay(tensors)
        return self.norms(tensors)

    def _replay(self, tensors: Sequence[Tensor]) -> Tensor:
        assert self._graph is not None
        replay, out = self._graph
        try:
            replay()
        except Exception:  # a graph that does not replay: eager for good, capture goes on
            self._graph, self.broken = None, True
            return self.norms(tensors)
        self.replays += 1
        return out

    def _may_capture(self) -> bool:
        if self.broken or self.captures >= self.MAX_CAPTURES:
            return False
        return not (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())
