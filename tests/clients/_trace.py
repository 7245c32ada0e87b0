"""What a client script computes itself, written beside its run for the tests to compare.

Each client takes ``--out DIR``; it saves its final weights (``weights.pt``) and a trace
(``trace.json``): per optimizer step the loss and gradient norm *as the script computes them*,
and the parameter names gradlens is expected to use.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


class Trace:
    def __init__(self) -> None:
        out = sys.argv[sys.argv.index("--out") + 1] if "--out" in sys.argv else None
        self.out = Path(out) if out else None
        self.data: dict[str, list] = {}

    def add(self, key: str, value: float) -> None:
        self.data.setdefault(key, []).append(float(value))

    def set(self, key: str, value) -> None:
        self.data[key] = value

    def save(self, *state_dicts: dict) -> None:
        if self.out is None:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        weights = {f"{i}.{k}": v for i, sd in enumerate(state_dicts) for k, v in sd.items()}
        torch.save(weights, self.out / "weights.pt")
        (self.out / "trace.json").write_text(json.dumps(self.data))


def grad_norm(params) -> float:
    grads = [p.grad.detach().double().norm() for p in params if p.grad is not None]
    return float(torch.stack(grads).norm()) if grads else 0.0
