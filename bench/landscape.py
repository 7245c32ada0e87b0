"""Loss-landscape grid: gradlens vs a naive per-point loop, side by side in one run.

    python bench/landscape.py                    # CPU cases, and the GPU case when CUDA is there
    python bench/landscape.py --device cpu --threads 1 --batch-points 4 16
    python bench/landscape.py --device cuda --case resnet18 --samples 1024

The naive loop is what most landscape code does (Li et al.'s ``crunch``, ``loss-landscapes``):
for every grid point copy ``θ + α·d₁ + β·d₂`` into the model, run the forward, read the loss
with ``.item()``. gradlens evaluates the same points (the same filter-normalized directions,
seed 0) through ``functional_call`` without writing the model and without a host sync per
point, batching points with ``vmap`` where that pays (``batch_points``), optionally in bf16
autocast with channels-last convolutions.

CPU cases: a small CNN on 128 CIFAR-sized samples (compute-bound: about a minute) and a small
MLP on 32 samples (overhead-bound: where batching points pays). On a shared machine pass
``--threads 1``: oversubscribed threads distort both columns. GPU case: ResNet-18 (CIFAR
layout) on 1,024 samples; the reference from the issue is 8.7 ms a point
(14.6 s for 41×41) for the naive loop on an H100, bf16 FLOP floor about 2.4 s, target ≤ 5 s.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import ResNet18

from gradlens.analysis.landscape import filter_directions, loss_landscape


class SmallCNN(nn.Module):
    """Two conv-BN-ReLU-pool stages and a linear head: 32×32 inputs, 10 classes."""

    def __init__(self, width: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.MaxPool2d(4),
        )
        self.head = nn.Linear(2 * width * 4 * 4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


# (case, probe-set samples): a compute-bound CNN and a small MLP on CPU; ResNet-18 on GPU
CASES = {"cpu": [("cnn", 128), ("mlp", 32)], "cuda": [("resnet18", 1024)]}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _case(name: str, device: str, samples: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    if name == "mlp":
        model: nn.Module = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
        x = torch.randn(samples, 64, generator=g)
    else:
        model = ResNet18() if name == "resnet18" else SmallCNN()
        with torch.no_grad():  # non-trivial BatchNorm statistics, as after training
            model.train()
            for _ in range(3):
                model(torch.randn(64, 3, 32, 32, generator=g))
        x = torch.randn(samples, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (samples,), generator=g)
    return model.eval().to(device), x.to(device), y.to(device)


def naive_grid(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, span: float
) -> list[float]:
    """Copy the weights of each point into the model, forward, ``.item()``: α-major order."""
    d1, d2 = filter_directions(model, 2, seed=0)
    params = dict(model.named_parameters())
    theta = {n: p.detach().clone() for n, p in params.items()}
    coords = torch.linspace(-span, span, steps).tolist()
    losses = []
    with torch.no_grad():
        for a in coords:
            for b in coords:
                for n, p in params.items():
                    p.copy_(theta[n] + a * d1[n] + b * d2[n])
                losses.append(F.cross_entropy(model(x), y).item())
        for n, p in params.items():
            p.copy_(theta[n])
    return losses


def _timed(fn: Callable[[], list[float]], device: str) -> tuple[float, list[float]]:
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - start, out


def _variants(device: str, batch_points: list[int]) -> list[tuple[str, dict]]:
    out: list[tuple[str, dict]] = [("gradlens auto", {})]
    out += [(f"gradlens vmap P={p}", {"batch_points": p}) for p in batch_points]
    if device == "cuda":
        fast = {"dtype": torch.bfloat16, "channels_last": True}
        out += [
            ("gradlens bf16+NHWC", fast),
            ("gradlens bf16+NHWC P=4", fast | {"batch_points": 4}),
        ]
    return out


def _ours(model, x, y, steps: int, span: float, kwargs: dict) -> tuple[list[float], dict]:
    frame = loss_landscape(
        model, F.cross_entropy, (x, y), 2, "filter", steps, span, roughness=0, **kwargs
    )
    return frame["loss"].tolist(), frame.attrs


def bench(
    case: str, device: str, steps: int, samples: int, span: float, batch_points: list[int]
) -> None:
    model, x, y = _case(case, device, samples)
    points = steps * steps
    variants = _variants(device, batch_points)
    for _, kwargs in variants:  # warm-up: kernels, autotuning, allocator, vmap machinery
        _ours(model, x, y, 3, span, kwargs)
    naive_grid(model, x, y, 3, span)

    naive_s, reference = _timed(lambda: naive_grid(model, x, y, steps, span), device)
    where = (
        f"{torch.get_num_threads()} threads" if device == "cpu" else torch.cuda.get_device_name()
    )
    print(f"\n{device} ({where}): {case}, {samples} samples, {steps}×{steps} grid")
    header = f"{'method':<26}{'engine':>12}{'ms/point':>10}{'total s':>10}{'speed-up':>10}"
    print(header + f"{'max |Δloss|':>14}")
    print(
        f"{'naive loop (.item())':<26}{'copy':>12}{1e3 * naive_s / points:>10.3f}"
        f"{naive_s:>10.2f}{1.0:>9.2f}×{'—':>14}"
    )
    for label, kwargs in variants:
        _sync(device)
        start = time.perf_counter()
        losses, attrs = _ours(model, x, y, steps, span, kwargs)
        _sync(device)
        seconds = time.perf_counter() - start
        engine = f"{attrs['engine']}×{attrs['batch_points']}"
        diff = max(abs(a - b) for a, b in zip(losses, reference, strict=True))
        print(
            f"{label:<26}{engine:>12}{1e3 * seconds / points:>10.3f}{seconds:>10.2f}"
            f"{naive_s / seconds:>9.2f}×{diff:>14.2e}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--steps", type=int, default=41)
    parser.add_argument("--span", type=float, default=0.5)
    parser.add_argument("--case", choices=["cnn", "mlp", "resnet18"], default=None)
    parser.add_argument("--samples", type=int, default=0, help="0: the case's default")
    parser.add_argument("--batch-points", type=int, nargs="*", default=[])
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    for device in devices:
        if device == "cuda" and not torch.cuda.is_available():
            print("\ncuda: not available, skipped")
            continue
        cases = CASES[device] if not args.case else [(args.case, args.samples or 128)]
        for case, samples in cases:
            bench(case, device, args.steps, args.samples or samples, args.span, args.batch_points)


if __name__ == "__main__":
    main()
