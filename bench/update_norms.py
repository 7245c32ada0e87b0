"""‖Δθ‖ per sampled step: a copy of θ vs the optimizer's own state, side by side per optimizer.

    python bench/update_norms.py                  # the 2-layer GPT of bench/overhead.py, CPU
    python bench/update_norms.py --case mlp --reps 30

Three ways of measuring the update of one sampled step, each timed on its own (the optimizer
step itself is not in the time; medians over ``--reps`` sampled steps):

- ``forever``: the previous NormSignal — a copy of θ allocated once and kept for the whole run,
  refreshed at the pre-step (``_foreach_copy_``), subtracted at the post-step;
- ``copy``: the copy path now — −θ taken at the pre-step (``_foreach_neg``), θ added at the
  post-step, freed after the norms (kept to the next step only for a probe);
- ``state``: Δθ read off the optimizer's state after the step (``capture.updates``), for the
  optimizers it supports (``-`` elsewhere: they use ``copy``).

Memory columns: ``held`` is what stays allocated between steps (a copy-forever holds one model;
the new paths hold nothing unless a probe reads ``last_update()`` after this step); ``peak+`` is
the rise of the step's peak heap (optimizer step and capture together, sampled after every aten
op through glibc's ``mallinfo2``) over the same step without ‖Δθ‖. Linux/glibc only for the
peak column.
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import make_case

from gradlens.capture.updates import group_indices, optimizer_update, supported
from gradlens.functional.norms import NormPlan

OPTIMIZERS: dict[str, Callable] = {
    "sgd-momentum": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-4),
    "sgd-nesterov": lambda ps: torch.optim.SGD(
        ps, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4
    ),
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-3),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.1),
    "adamw-amsgrad": lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.1, amsgrad=True),
    "adamw-fused": lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.1, fused=True),
    "rmsprop": lambda ps: torch.optim.RMSprop(ps, lr=1e-3),
}


# -- peak heap (CPU) ----------------------------------------------------------------------------


_MALLINFO2 = (
    "arena", "ordblks", "smblks", "hblks", "hblkhd",
    "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
)  # fmt: skip


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in _MALLINFO2]


def _heap_reader() -> Callable[[], int] | None:
    """Bytes malloc has handed out (arena + mmapped blocks), or None without glibc ≥ 2.33."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallinfo2 = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = _MallInfo2

    def read() -> int:
        info = mallinfo2()
        return int(info.uordblks + info.hblkhd)

    return read


class _PeakHeap(TorchDispatchMode):
    """The largest heap seen after any aten op inside the mode."""

    def __init__(self, read: Callable[[], int]) -> None:
        super().__init__()
        self.read = read
        self.peak = read()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.peak = max(self.peak, self.read())
        return out


# -- the three ways ------------------------------------------------------------------------------


class _Way:
    """pre() before the optimizer step, post() after it → per-tensor norms; held() in bytes."""

    def __init__(self, params: list[torch.Tensor], optimizer: torch.optim.Optimizer) -> None:
        self.params, self.optimizer = params, optimizer
        self.norms = NormPlan(params)

    def pre(self) -> None: ...

    def post(self) -> torch.Tensor:
        raise NotImplementedError

    def held(self) -> int:
        return 0


class Forever(_Way):
    def __init__(self, params, optimizer) -> None:
        super().__init__(params, optimizer)
        self.saved = [p.detach().clone() for p in params]

    def pre(self) -> None:
        torch._foreach_copy_(self.saved, self.params)

    def post(self) -> torch.Tensor:
        torch._foreach_sub_(self.saved, self.params)
        return self.norms(self.saved)

    def held(self) -> int:
        return sum(s.numel() * s.element_size() for s in self.saved)


class Copy(_Way):
    saved: list[torch.Tensor] | None = None

    def pre(self) -> None:
        self.saved = list(torch._foreach_neg(self.params))

    def post(self) -> torch.Tensor:
        assert self.saved is not None
        torch._foreach_add_(self.saved, self.params)
        norms = self.norms(self.saved)
        self.saved = None
        return norms


class State(_Way):
    def __init__(self, params, optimizer) -> None:
        super().__init__(params, optimizer)
        self.groups = group_indices(optimizer, params)
        assert self.groups is not None and supported(optimizer)

    def post(self) -> torch.Tensor:
        assert self.groups is not None
        delta = optimizer_update(self.optimizer, self.params, self.groups)
        assert delta is not None
        return self.norms(delta)


WAYS = {"forever": Forever, "copy": Copy, "state": State}


# -- the bench -----------------------------------------------------------------------------------


def _measure(case: str, opt_name: str, way: str | None, reps: int, read) -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model, batch, loss_fn = make_case(case, "cpu", g)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = OPTIMIZERS[opt_name](params)
    measure = None
    times, steps, peaks, residue, norms = [], [], [], [], None
    for rep in range(2 * reps + 3):  # after a warm-up: timed and heap-sampled steps alternate
        opt.zero_grad(set_to_none=True)
        loss_fn(model, batch).backward()
        if measure is None and way is not None and rep == 1:  # the state exists after step 0
            measure = WAYS[way](params, opt)
        with torch.no_grad():
            start_heap = read() if read else 0
            mode = _PeakHeap(read) if read and rep >= 3 and rep % 2 else None
            t0 = time.perf_counter()
            if measure:
                measure.pre()
            t1 = time.perf_counter()
            if mode:
                with mode:
                    opt.step()
            else:
                opt.step()
            t2 = time.perf_counter()
            if measure:
                if mode:
                    with mode:
                        norms = measure.post()
                else:
                    norms = measure.post()
            t3 = time.perf_counter()
            norms = None if norms is None else norms.clone()
        if rep >= 3 and read:
            residue.append(read() - start_heap)  # what the step left allocated
        if rep >= 3 and not mode:
            times.append((t1 - t0) + (t3 - t2))
            steps.append(t2 - t1)
        if rep >= 3 and mode:
            held = measure.held() if isinstance(measure, Forever) else 0
            peaks.append(mode.peak - start_heap + held)
    model_bytes = sum(p.numel() * p.element_size() for p in params)
    return {
        "ms": 1e3 * statistics.median(times),
        "step_ms": 1e3 * statistics.median(steps),
        "peak": statistics.median(peaks) if peaks else float("nan"),
        "held": float(measure.held()) if measure else 0.0,
        "residue": statistics.median(residue) if residue else float("nan"),
        "model": float(model_bytes),
        "sum": float(norms.sum()) if norms is not None else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", default="gpt-cpu", help="a case of bench/models.py")
    parser.add_argument("--reps", type=int, default=20, help="sampled steps timed per cell")
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    read = _heap_reader()
    names = args.optimizers.split(",")
    print(f"case {args.case}, CPU, {torch.get_num_threads()} thread, {args.reps} sampled steps")
    header = (
        f"{'optimizer':<15}{'ms step':>9}{'ms forever':>11}{'ms copy':>9}{'ms state':>10}"
        f"{'held forever':>14}{'held new':>10}{'peak+ forever':>15}{'peak+ copy':>12}"
        f"{'peak+ state':>13}"
    )
    print(header)
    for name in names:
        base = _measure(args.case, name, None, args.reps, read)
        cells = {}
        for way in WAYS:
            if way == "state":
                probe = OPTIMIZERS[name]([torch.nn.Parameter(torch.zeros(1))])
                if type(probe) not in (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW):
                    continue
            cells[way] = _measure(args.case, name, way, args.reps, read)

        new = [cells[w]["residue"] - base["residue"] for w in ("copy", "state") if w in cells]
        held_new = max(0.0, *new)  # measured: heap after the step minus before, vs plain
        ms = {w: f"{cells[w]['ms']:.3f}" if w in cells else "-" for w in WAYS}
        peak = {
            w: f"{max(0.0, cells[w]['peak'] - base['peak']):,.0f}" if w in cells and read else "-"
            for w in WAYS
        }
        print(
            f"{name:<15}{base['step_ms']:>9.3f}{ms['forever']:>11}{ms['copy']:>9}{ms['state']:>10}"
            f"{cells['forever']['held']:>14,.0f}{held_new:>10,.0f}{peak['forever']:>15}"
            f"{peak['copy']:>12}{peak['state']:>13}"
        )
        if "state" in cells:  # the two methods measure the same thing
            a, b = cells["state"]["sum"], cells["copy"]["sum"]
            assert abs(a - b) <= 1e-4 * abs(b), (name, a, b)
    print(f"model: {int(base['model']):,} bytes of parameters")
    print("ms step: optimizer.step() alone; ms forever/copy/state: the ‖Δθ‖ work of one sampled")
    print("step (pre-step + post-step), the optimizer step excluded")


if __name__ == "__main__":
    main()
