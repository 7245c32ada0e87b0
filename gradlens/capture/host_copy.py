"""Device values to the host without a sync on the training thread.

The training thread stacks the values and starts one non-blocking copy (with an event on CUDA);
the writer thread waits for that copy and reads the numbers. Used for the values a flush hands
to the writer as a job (``gradlens.log`` tensors, evaluation sums).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["copy_to_host"]


def copy_to_host(tensors: Sequence[Tensor]) -> Callable[[], list[Any]]:
    """Start copying same-shaped ``tensors`` to the host; call the result (on the writer thread)
    for their values as float lists, in order.

    Example:
        >>> values = copy_to_host([torch.tensor(1.5), torch.tensor(2.0)])
        >>> values()
        [1.5, 2.0]
    """
    if not tensors:
        raise ValueError("copy_to_host needs at least one tensor")
    device = tensors[0].device
    stacked = torch.stack([t.detach().to(device) for t in tensors])  # a fresh tensor: no alias
    host = stacked.to("cpu", non_blocking=True)
    ready = None
    if device.type == "cuda":
        ready = torch.cuda.Event()
        ready.record()

    def values() -> list[Any]:
        if ready is not None:
            ready.synchronize()
        return host.double().tolist()

    return values
