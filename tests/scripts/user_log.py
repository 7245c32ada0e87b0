"""A script that logs its own evaluation loss with gradlens.log (also runs without gradlens)."""

import torch
import torch.nn.functional as F
from torch import nn

import gradlens

torch.manual_seed(0)
model = nn.Linear(4, 3)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
for step in range(10):
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    if step % 5 == 4:
        with torch.no_grad():
            gradlens.log({"eval_loss": F.cross_entropy(model(x), y)})
