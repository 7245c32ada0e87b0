"""Cost of the neural-collapse probe against the plain forward pass over the same probe set.

    python bench/collapse.py                 # CPU cases, and GPU cases when CUDA is there
    python bench/collapse.py --trials 7 --batches 8

``forward`` is the plain forward pass over the probe set (eval mode, ``no_grad``); ``probe``
is what the collapse probe does over the same batches: the forward with the classifier's
input hooked, the float64 streaming accumulation, and ``compute()`` with the classifier
(NC1–NC4, CDNV, pairwise statistics); ``api`` adds what ``gradlens.neural_collapse`` does
around it (state save/restore). Trials alternate (forward, probe, api); times are medians,
``ratio`` the median of per-trial probe/forward wall-time ratios and ``cpu ratio`` the same
with process CPU time (steadier than wall time on a shared machine; CPU only: on a GPU it
counts the host's time). Target: probe/forward ≤ 1.1×.

Cases: ``cnn`` (a small conv net, d = 256, C = 10), ``lm`` (the two-layer GPT of
``bench/models.py``, d = 128 < C = 512 vocabulary; the model is called as ``model(idx,
targets)``, as in training), and ``mlp`` (bench/models.py's MLP, 784→1024→1024→10).

What to expect: per batch the probe adds one d²-per-sample Gram (the within-class scatter)
and O(Bd) bookkeeping, which is a few percent of a conv net's or a transformer's forward;
``compute()`` is a fixed cost per probe (float64 eigendecomposition, C×C pairwise statistics,
NC4 on up to 2048 kept samples), so the ratio falls as the probe set grows (``--batches``).
The MLP is the worst case: a network so shallow that the Gram costs about as much as one of
its two hidden layers. Use ``--threads 1`` on a shared machine: small intra-op parallel
kernels degrade badly when the cores are oversubscribed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import GPT, MLP

from gradlens.analysis.collapse import (
    classifier_parameters,
    find_classifier,
    neural_collapse,
    stream_collapse,
)
from gradlens.analysis.objective import Batch

CPU_CASES = ["cnn", "lm", "mlp"]
GPU_CASES = ["cnn", "lm", "mlp"]


class CNN(nn.Module):
    """Four conv blocks on 32×32 inputs, global pooling, a 256 → 10 classifier."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for cout in (32, 64, 128, 256):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
            layers += [nn.MaxPool2d(2)] if cout < 256 else []
            cin = cout
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(256, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


def make_case(name: str, batches: int, device: str) -> tuple[nn.Module, list[Batch]]:
    g = torch.Generator().manual_seed(0)
    gpu = device == "cuda"
    if name == "cnn":
        model: nn.Module = CNN()
        n = 256 if gpu else 64
        data = [(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g))]
    elif name == "mlp":
        model, n = MLP(), 256
        data = [(torch.randn(n, 784, generator=g), torch.randint(0, 10, (n,), generator=g))]
    elif name == "lm":
        b, t, d, layers = (32, 128, 256, 4) if gpu else (16, 64, 128, 2)
        model = GPT(block=t, d=d, layers=layers)
        idx = torch.randint(0, 512, (b, t + 1), generator=g)
        data = [(idx[:, :-1], idx[:, 1:])]
    else:
        raise ValueError(f"unknown case {name!r}")
    data = data * batches  # the same probe batch repeated: timing only
    model = model.to(device).eval()
    out = []
    for x, y in data:
        x, y = x.to(device), y.to(device)
        args = (x, y) if name == "lm" else (x,)  # nanoGPT style: loss inside forward
        out.append(Batch(args, {}, y, None, len(y)))
    return model, out


def _timed(fn: Callable[[], object], device: str) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    if device == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def bench(name: str, device: str, batches: int, trials: int) -> dict[str, float]:
    """Medians over alternating trials; ratios are medians of per-trial ratios (drift-proof)."""
    model, data = make_case(name, batches, device)
    head = find_classifier(model)
    weight, bias = classifier_parameters(head)

    def forward() -> None:
        with torch.no_grad():
            for batch in data:
                model(*batch.args)

    def probe() -> None:
        stream_collapse(model, data, head).compute(weight, bias)

    def api() -> None:
        # items (inputs..., labels): the LM is called as model(idx, targets), as in training
        neural_collapse(model, [(*b.args, b.target) for b in data])

    for fn in (forward, probe, api):  # warm-up
        fn()
    runs: dict[str, list[tuple[float, float]]] = {"forward": [], "probe": [], "api": []}
    for _ in range(trials):
        for key, fn in (("forward", forward), ("probe", probe), ("api", api)):
            runs[key].append(_timed(fn, device))
    out = {key: statistics.median(w for w, _ in values) for key, values in runs.items()}
    pairs = list(zip(runs["forward"], runs["probe"], strict=True))
    out["ratio"] = statistics.median(p[0] / f[0] for f, p in pairs)
    out["cpu_ratio"] = statistics.median(p[1] / f[1] for f, p in pairs)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--cases", nargs="*", default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print(
        f"{'device':6} {'case':5} {'forward ms':>11} {'probe ms':>9} {'ratio':>6} "
        f"{'cpu ratio':>9} {'api ms':>8}"
    )
    for device in devices:
        cases = args.cases or (CPU_CASES if device == "cpu" else GPU_CASES)
        for name in cases:
            t = bench(name, device, args.batches, args.trials)
            print(
                f"{device:6} {name:5} {1e3 * t['forward']:11.1f} {1e3 * t['probe']:9.1f} "
                f"{t['ratio']:6.2f} {t['cpu_ratio']:9.2f} {1e3 * t['api']:8.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
