"""MLP classifier on synthetic clustered data: a small, honest training run for gradlens.

    python examples/mlp_classifier.py                      # healthy, ~10 s on a CPU
    python examples/mlp_classifier.py --spike-at 150       # one step at 100× the learning rate
    gradlens watch examples/mlp_classifier.py --steps 300

Plain PyTorch, no gradlens import: `gradlens watch` instruments it from outside.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn


def make_clusters(n: int, classes: int, dim: int, generator: torch.Generator):
    """Gaussian clusters around random centres; labels are the cluster index."""
    centres = torch.randn(classes, dim, generator=generator) * 0.35
    labels = torch.randint(0, classes, (n,), generator=generator)
    points = centres[labels] + torch.randn(n, dim, generator=generator)
    return points, labels


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--spike-at", type=int, default=None, help="step with a LR spike")
    parser.add_argument("--spike-factor", type=float, default=100.0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    data = torch.Generator().manual_seed(args.seed)
    x, y = make_clusters(8192, classes=8, dim=32, generator=data)
    model = MLP(32, args.hidden, 8)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)

    for step in range(args.steps):
        idx = torch.randint(0, len(x), (args.batch_size,), generator=data)
        lr = args.lr * (args.spike_factor if step == args.spike_at else 1.0)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {loss.item():.4f}")

    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    print(f"final accuracy {accuracy:.3f}")


if __name__ == "__main__":
    main()
