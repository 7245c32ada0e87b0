"""Trains 40 steps (8 tensors, so the rows are not tiny); then, with argv[1] == "meta",
replaces the run's meta.json by a folder so that writing the final status fails.
argv[2] is the run folder."""

import shutil
import sys
from pathlib import Path

import torch
from torch import nn

model = nn.Sequential(*[nn.Linear(16, 16) for _ in range(4)])
opt = torch.optim.SGD(model.parameters(), lr=0.01)
for _ in range(40):
    opt.zero_grad()
    model(torch.randn(8, 16)).pow(2).mean().backward()
    opt.step()
if sys.argv[1] == "meta":
    meta = Path(sys.argv[2]) / "meta.json"
    shutil.copy(meta, meta.with_name("meta.json.copy"))
    meta.unlink()
    meta.mkdir()
print("training done")
