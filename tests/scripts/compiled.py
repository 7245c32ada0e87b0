"""A torch.compile'd model trained with Adam; the backend is argv[1] (default inductor)."""

import sys

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)
backend = sys.argv[1] if len(sys.argv) > 1 else "inductor"
model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
compiled = torch.compile(model, backend=backend)
opt = torch.optim.Adam(compiled.parameters(), lr=1e-2)
x, y = torch.randn(64, 8), torch.randint(0, 4, (64,))
for _ in range(int(sys.argv[2]) if len(sys.argv) > 2 else 20):
    opt.zero_grad()
    F.cross_entropy(compiled(x), y).backward()
    opt.step()
print("done")
