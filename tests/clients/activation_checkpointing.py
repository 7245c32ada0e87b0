"""Activation checkpointing of each block (``torch.utils.checkpoint``): ``--reentrant`` runs
the old reentrant variant, whose backward calls ``torch.autograd.backward`` itself for every
block; ``--manual`` updates the parameters by hand (``p -= lr * p.grad``) instead of Adam."""

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F
from _trace import Trace, grad_norm
from torch.utils.checkpoint import checkpoint

parser = argparse.ArgumentParser()
parser.add_argument("--out")
parser.add_argument("--reentrant", action="store_true")
parser.add_argument("--manual", action="store_true")
args = parser.parse_args()
torch.manual_seed(0)


class Block(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        return x + self.mlp(self.norm(x))


class DeepMLP(nn.Module):
    def __init__(self, dim=16, depth=3, classes=4):
        super().__init__()
        self.embed = nn.Linear(10, dim)
        self.blocks = nn.ModuleList(Block(dim) for _ in range(depth))
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.embed(x)
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=args.reentrant)
        return self.head(x)


model = DeepMLP()
opt = None if args.manual else torch.optim.Adam(model.parameters(), lr=3e-3)
g = torch.Generator().manual_seed(9)
x, y = torch.randn(64, 10, generator=g), torch.randint(0, 4, (64,), generator=g)
trace = Trace()
trace.set("names", [n for n, _ in model.named_parameters()])
for step in range(6):
    model.zero_grad()
    loss = F.cross_entropy(model(x[step % 2 :: 2]), y[step % 2 :: 2])
    loss.backward()
    trace.add("loss", loss.item())
    trace.add("grad_norm", grad_norm(model.parameters()))
    if opt is not None:
        opt.step()
    else:
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.05 * p.grad
    print(f"step {step} loss {loss.item():.5f}")
trace.save(model.state_dict())
