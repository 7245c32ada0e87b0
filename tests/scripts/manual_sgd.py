"""Training with hand-written SGD: no torch.optim optimizer anywhere."""

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
x, y = torch.randn(128, 8), torch.randint(0, 2, (128,))
lr = 0.1
for _ in range(25):
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    for p in model.parameters():
        p.data.add_(p.grad, alpha=-lr)
print("done")
