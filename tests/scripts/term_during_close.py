"""Trains 30 steps, then arranges for SIGTERM to arrive while gradlens compacts the run
(as torchrun's SIGTERM to the surviving ranks does): the close must still finish."""

import os
import signal

import torch
from torch import nn

import gradlens.store.writer as writer

model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
for _ in range(30):
    opt.zero_grad()
    model(torch.randn(8, 4)).pow(2).mean().backward()
    opt.step()

compact = writer.compact_table


def terminated_while_compacting(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    return compact(*args, **kwargs)


writer.compact_table = terminated_while_compacting
