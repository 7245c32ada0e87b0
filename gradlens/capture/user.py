"""The script's own scalars (``gradlens.log``), buffered without host syncs, written in blocks
to the ``user`` table."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from gradlens.capture.host_copy import copy_to_host
from gradlens.store.writer import Sink

__all__ = ["UserMetrics", "snapshot"]


class UserMetrics:
    """Buffers ``(step, name, value)``; tensors stay on their device until :meth:`flush`."""

    def __init__(self, sink: Sink, say: Callable[[str], None], limit: int = 256) -> None:
        self.sink = sink
        self.say = say
        self.limit = limit
        self._rows: list[tuple[int, str, float | Tensor]] = []

    def add(self, values: Mapping[str, Any], step: int) -> None:
        if not isinstance(values, Mapping):
            self.say("gradlens.log takes a mapping of names to numbers; ignored")
            return
        for name, value in values.items():
            number = _number(value)
            if number is None:
                self.say(f"gradlens.log: {name!r} is not a number or a one-element tensor; skipped")
                continue
            self._rows.append((int(step), str(name), number))
        if len(self._rows) >= self.limit:
            self.flush()

    def flush(self) -> None:
        if not self._rows:
            return
        rows, self._rows = self._rows, []
        tensors = [v for _, _, v in rows if isinstance(v, Tensor)]
        copied = copy_to_host(tensors) if tensors else None

        def job() -> dict[str, dict[str, Any]]:
            host = iter(copied() if copied is not None else [])
            values = [next(host) if isinstance(v, Tensor) else v for _, _, v in rows]
            return {
                "user": {
                    "step": [s for s, _, _ in rows],
                    "metric": [n for _, n, _ in rows],
                    "value": values,
                }
            }

        self.sink(job)


def snapshot(value: Tensor) -> Tensor:
    """A copy of a one-element accelerator tensor, read at the next flush: the script may change
    its tensor in place meanwhile (a running sum), and ``.float()`` of a float32 tensor is the
    tensor itself (every row would have read the flush-time value)."""
    return value.detach().reshape(()).to(torch.float32, copy=True)


def _number(value: Any) -> float | Tensor | None:
    if isinstance(value, Tensor):
        if value.numel() != 1 or value.is_complex():
            return None
        if value.device.type == "cpu":  # reading a CPU number costs no sync
            return float(value.detach())
        return snapshot(value)
    if isinstance(value, bool | int | float) or hasattr(value, "__float__"):
        try:
            number = float(value)
        except (TypeError, ValueError):
            return None
        return number
    return None
