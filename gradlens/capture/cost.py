"""What the capture costs, counted: aten ops per step (deterministic, unlike timings).

``bench/overhead.py`` prints the ops and launches gradlens adds per optimizer step; a test
asserts the launch count is small and flat in the number of parameter tensors.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["VIEWS", "DispatchCount"]

# Ops that alias or read a tensor without launching a kernel on an accelerator.
VIEWS = frozenset({"view", "select", "slice", "detach", "unbind", "alias", "_local_scalar_dense"})


class DispatchCount(TorchDispatchMode):
    """Counts the aten ops run inside ``with DispatchCount() as count:``."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.ops.values())

    @property
    def launches(self) -> int:
        """Ops that launch a kernel (not views, not host reads)."""
        return sum(n for op, n in self.ops.items() if op not in VIEWS)
