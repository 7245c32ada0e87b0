"""Step-time overhead of gradlens capture: watched / plain, side by side in one run.

    python bench/overhead.py                 # CPU cases, and GPU cases when CUDA is there
    python bench/overhead.py --steps 150 --trials 7

Plain and watched trials alternate on the same model (so drift and thermal effects hit both),
each trial times ``--steps`` optimizer steps after a warm-up (at least two ``--every``
flushes fall inside the timed window); the ratio is the median watched step time over the
median plain one. "watched" is exactly what `gradlens watch` installs: an
automatic Lens (global hooks, model discovery, loss interception, background writer).

Columns: ``ratio`` is the default capture (``no-updates``: without ‖Δθ‖, which costs one
parameter copy and a subtraction per step, `--no-updates` in `gradlens watch`; ``graphs``, on
the GPU: with ``GRADLENS_CUDA_GRAPHS=1``, an unsampled step's gradient norms replayed as one CUDA
graph, see ``gradlens/capture/replay.py``), and the
``.item()/layer`` baseline is the naive logger (one host sync per parameter tensor).
``+ops`` and ``+launches`` count what gradlens adds per optimizer step (deterministic): aten
ops seen by a ``TorchDispatchMode`` on the CPU (launches = ops that are not views), CUDA
kernels seen by ``torch.profiler`` on the GPU; ``accel`` counts on the CPU the code path an
accelerator runs (without the CPU-only BLAS norms and exact non-finite counts, see
``bench/hostcost.py``). ``hook ms`` is the time per step the training thread spends inside
gradlens's entry points (on a GPU: Python and launches; on the CPU also the kernels), ``writer
ms`` the writer thread's CPU time per step (decode, spikes, Parquet; it competes for the GIL).
Targets: ≤ 12 extra launches per step, flat in the number of tensors; ≤ 1.05 on CPU, ≤ 1.02
on GPU. Reference points on an H100 (issue #2): per-layer ``.item()`` capture 1.19×,
wandb-style gradient histograms 1.63×, Cockpit "economy" 1.51×.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hostcost import HostTime, accelerator_path
from models import make_case

import gradlens

CPU_CASES = ["mlp", "gpt-cpu"]
GPU_CASES = ["resnet18", "gpt", "nanogpt"]
EVERY = 50


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _train(model, opt, batch, loss_fn, steps: int, device: str) -> float:
    """Seconds per step over ``steps`` steps."""
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss_fn(model, batch).backward()
        opt.step()
    _sync(device)
    return (time.perf_counter() - start) / steps


def _item_per_layer(model, opt, batch, loss_fn, steps: int, device: str) -> float:
    """The naive baseline: one .item() per parameter per step (what most loggers do)."""
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss_fn(model, batch).backward()
        _ = [p.grad.norm().item() for p in model.parameters()]
        opt.step()
    _sync(device)
    return (time.perf_counter() - start) / steps


def _count(model, opt, batch, loss_fn, steps: int, device: str) -> tuple[float, float]:
    """(ops, launches) per step: aten ops on the CPU, CUDA kernels on the GPU."""
    if device == "cuda":
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            _train(model, opt, batch, loss_fn, steps, device)
        kernels = sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
        return kernels / steps, kernels / steps
    from gradlens.capture.cost import DispatchCount

    count = DispatchCount()
    with count:
        _train(model, opt, batch, loss_fn, steps, device)
    return count.total / steps, count.launches / steps


def _added(model, opt, batch, loss_fn, device: str, runs_dir: Path) -> tuple[float, ...]:
    """(ops, launches, accelerator launches) gradlens adds per step, over 2 × 20 steps
    (sampled ones included). On the CPU the last is counted on the accelerator's code path."""
    plain = _count(model, opt, batch, loss_fn, 40, device)
    added = []
    for path in (contextlib.nullcontext, accelerator_path):
        with path(), gradlens.Lens(runs_dir=runs_dir, name="count"):
            _train(model, opt, batch, loss_fn, 3, device)
            watched = _count(model, opt, batch, loss_fn, 40, device)
        added.append((watched[0] - plain[0], watched[1] - plain[1]))
    return added[0][0], added[0][1], added[1][1]


@contextlib.contextmanager
def _cuda_graphs(on: bool):
    """``GRADLENS_CUDA_GRAPHS=1`` inside (read when a Lens's recorders are made)."""
    saved = os.environ.pop("GRADLENS_CUDA_GRAPHS", None)
    if on:
        os.environ["GRADLENS_CUDA_GRAPHS"] = "1"
    try:
        yield
    finally:
        os.environ.pop("GRADLENS_CUDA_GRAPHS", None)
        if saved is not None:
            os.environ["GRADLENS_CUDA_GRAPHS"] = saved


def _host(model, opt, batch, loss_fn, steps: int, device: str, runs_dir: Path) -> HostTime:
    """Seconds in gradlens's hooks (training thread) and of writer CPU over ``steps`` steps."""
    with HostTime() as host, gradlens.Lens(runs_dir=runs_dir, name="host", every=EVERY):
        _train(model, opt, batch, loss_fn, 3, device)
        host.hooks = host.writer = 0.0
        _train(model, opt, batch, loss_fn, steps, device)
    return host


def bench(case: str, device: str, steps: int, trials: int, runs_dir: Path) -> dict:
    g = torch.Generator().manual_seed(0)
    model, batch, loss_fn = make_case(case, device, g)
    model = model.to(device)
    batch = tuple(t.to(device) for t in batch)
    fused = case == "nanogpt" and device == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused or None)
    _train(model, opt, batch, loss_fn, max(3, steps // 5), device)  # warm-up
    plain, watched, no_updates, naive, graphed = [], [], [], [], []
    variants = [(True, watched, False), (False, no_updates, False)]
    if device == "cuda":
        variants.append((True, graphed, True))
    for trial in range(trials):
        plain.append(_train(model, opt, batch, loss_fn, steps, device))
        for track, out, graphs in variants:
            name = f"{case}-{trial}-{track}-{graphs}"
            with _cuda_graphs(graphs):
                lens = gradlens.Lens(runs_dir=runs_dir, name=name, track_updates=track, every=EVERY)
                with lens:
                    _train(model, opt, batch, loss_fn, 3, device)  # the first capture
                    out.append(_train(model, opt, batch, loss_fn, steps, device))
        naive.append(_item_per_layer(model, opt, batch, loss_fn, steps, device))
    p, w, u, n = (statistics.median(v) for v in (plain, watched, no_updates, naive))
    g = statistics.median(graphed) if graphed else math.nan
    ops, launches, accelerator = _added(model, opt, batch, loss_fn, device, runs_dir)
    host = _host(model, opt, batch, loss_fn, steps, device, runs_dir)
    return {
        "case": case,
        "device": device,
        "tensors": len(list(model.parameters())),
        "plain_ms": p * 1e3,
        "watched_ms": w * 1e3,
        "ratio": w / p,
        "no_updates_ratio": u / p,
        "item_ratio": n / p,
        "graphs_ratio": g / p,
        "extra_ops": ops,
        "extra_launches": launches,
        "accelerator_launches": accelerator,
        "hook_ms": host.hooks / steps * 1e3,
        "writer_ms": host.writer / steps * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2 * EVERY + 10)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--cases", nargs="*", default=None)
    args = parser.parse_args()
    targets = [(c, "cpu") for c in CPU_CASES]
    if torch.cuda.is_available():
        targets += [(c, "cuda") for c in GPU_CASES]
    if args.cases:
        targets = [t for t in targets if t[0] in args.cases]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
        + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU")
    )
    header = (
        f"{'case':<10} {'device':<6} {'tensors':>7} {'plain ms':>9} {'gradlens ms':>11} "
        f"{'ratio':>6} {'target':>6} {'no-updates':>10} {'graphs':>6} {'.item()/layer':>13} "
        f"{'+ops':>6} {'+launches':>9} {'accel':>5} {'hook ms':>7} {'writer ms':>9}"
    )
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        for case, device in targets:
            r = bench(case, device, args.steps, args.trials, Path(tmp))
            target = 1.05 if device == "cpu" else 1.02
            print(
                f"{r['case']:<10} {r['device']:<6} {r['tensors']:>7} {r['plain_ms']:>9.2f} "
                f"{r['watched_ms']:>11.2f} {r['ratio']:>6.3f} {target:>6.2f} "
                f"{r['no_updates_ratio']:>10.3f} {r['graphs_ratio']:>6.3f} "
                f"{r['item_ratio']:>13.3f} "
                f"{r['extra_ops']:>6.1f} {r['extra_launches']:>9.1f} "
                f"{r['accelerator_launches']:>5.1f} {r['hook_ms']:>7.3f} {r['writer_ms']:>9.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
