"""Trains 200 steps and moves to another folder at step 20 (like Hydra < 1.2, or scripts that
``os.chdir`` to their own folder): the run must stay whole in the folder it started in."""

import os
import sys

import torch
from torch import nn

model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
for step in range(200):
    if step == 20:
        os.chdir(sys.argv[1])
    opt.zero_grad()
    model(torch.randn(8, 4)).pow(2).mean().backward()
    opt.step()
print("done in", os.getcwd())
