"""Modular addition with an MLP: softmax collapse in float32, and grokking when it is avoided.

    python examples/grokking.py                      # memorises, then softmax collapse
    python examples/grokking.py --weight-decay 1.0   # AdamW decay: grokks instead
    gradlens watch examples/grokking.py

The setup of Prieto et al. 2025, "Grokking at the Edge of Numerical Stability" (arXiv
2501.04697), scaled down for a CPU: ``(a + b) mod p`` (p = 59 here, 113 in the paper; half of
the pairs for training) from the concatenated one-hot codes of ``a`` and ``b``, an MLP with two
hidden layers of 200, full-batch AdamW with ``betas=(0.9, 0.99)`` and a tiny ``eps=1e-25``,
float32, no weight decay. Training accuracy reaches 100% early; the loss then keeps falling only
by scaling up the logits (naive loss minimisation) until, sample after sample, ``exp(z − max z)``
sums to exactly 1 in float32: the softmax is exactly one-hot, the sample's gradient is exactly
zero (the "softmax collapse" column, from about step 1600), the loss stalls, training turns
unstable, and test accuracy never rises. With weight decay the logits stay in range and the
model grokks: test accuracy rises late, long after the training set is fit.

Plain PyTorch, no gradlens import: `gradlens watch` instruments it from outside.
"""

from __future__ import annotations

import argparse
import time
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def make_data(
    p: int, train_fraction: float, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """All pairs ``(a, b)`` as concatenated one-hot codes, labels ``(a + b) mod p``, split."""
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    a, b = a.flatten(), b.flatten()
    x = torch.cat([F.one_hot(a, p), F.one_hot(b, p)], dim=1).float()
    y = (a + b) % p
    order = torch.randperm(p * p, generator=generator)
    n = int(train_fraction * p * p)
    train, test = order[:n], order[n:]
    return x[train], y[train], x[test], y[test]


class MLP(nn.Module):
    def __init__(self, p: int, hidden: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(2 * p, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.head = nn.Linear(hidden, p)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


class Result(NamedTuple):
    model: MLP
    data: tuple[Tensor, Tensor, Tensor, Tensor]  # x_train, y_train, x_test, y_test
    history: list[dict[str, float]]


def saturated_fraction(logits: Tensor) -> float:
    """Share of samples whose softmax is exactly one-hot in the logits' dtype (Prieto et al.)."""
    shifted = logits - logits.amax(dim=1, keepdim=True)
    return (shifted.exp().sum(dim=1) == 1).float().mean().item()


def train(
    steps: int = 2200,
    p: int = 59,
    train_fraction: float = 0.5,
    hidden: int = 200,
    lr: float = 1e-2,
    weight_decay: float = 0.0,
    seed: int = 0,
    log_every: int = 100,
    verbose: bool = True,
) -> Result:
    """Train; the history has one dict per logged step (loss, accuracies, sc, seconds)."""
    torch.manual_seed(seed)
    x_train, y_train, x_test, y_test = make_data(
        p, train_fraction, torch.Generator().manual_seed(seed)
    )
    model = MLP(p, hidden)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=lr, betas=(0.9, 0.99), eps=1e-25, weight_decay=weight_decay
    )
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    for step in range(steps):
        logits = model(x_train)
        loss = F.cross_entropy(logits, y_train)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % log_every == 0 or step == steps - 1:
            history.append(_log(step, model, logits.detach(), loss, y_train, x_test, y_test))
            history[-1]["seconds"] = time.perf_counter() - start
            if verbose:
                _print(history[-1])
    return Result(model, (x_train, y_train, x_test, y_test), history)


def _log(
    step: int,
    model: nn.Module,
    logits: Tensor,
    loss: Tensor,
    y_train: Tensor,
    x_test: Tensor,
    y_test: Tensor,
) -> dict[str, float]:
    with torch.no_grad():  # held-out pairs (gradlens watch records this as eval_loss/accuracy)
        test_logits = model(x_test)
        test_loss = F.cross_entropy(test_logits, y_test).item()
        test_acc = (test_logits.argmax(1) == y_test).float().mean().item()
    return {
        "step": step,
        "loss": loss.item(),
        "train_acc": (logits.argmax(1) == y_train).float().mean().item(),
        "test_loss": test_loss,
        "test_acc": test_acc,
        "sc": saturated_fraction(logits),
    }


def _print(row: dict[str, float]) -> None:
    print(
        f"step {row['step']:5d}  loss {row['loss']:.3e}  train acc {row['train_acc']:.3f}  "
        f"test loss {row['test_loss']:.3e}  test acc {row['test_acc']:.3f}  "
        f"softmax collapse {row['sc']:.3f}  ({row['seconds']:.0f} s)",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2200)
    parser.add_argument("--p", type=int, default=59, help="the modulus")
    parser.add_argument("--train-fraction", type=float, default=0.5)
    parser.add_argument("--hidden", type=int, default=200)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--weight-decay", type=float, default=0.0, help="AdamW decay (1.0 grokks)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=100)
    args = parser.parse_args()
    train(
        steps=args.steps,
        p=args.p,
        train_fraction=args.train_fraction,
        hidden=args.hidden,
        lr=args.lr,
        weight_decay=args.weight_decay,
        seed=args.seed,
        log_every=args.log_every,
    )


if __name__ == "__main__":
    main()
