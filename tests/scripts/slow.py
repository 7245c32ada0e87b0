"""Trains slowly (sleeping each step) and reports progress, for the SIGKILL test."""

import sys
import time

import torch
from torch import nn

model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
for step in range(100_000):
    opt.zero_grad()
    model(torch.randn(8, 4)).pow(2).mean().backward()
    opt.step()
    print(f"step {step}", flush=True)
    time.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 0.01)
