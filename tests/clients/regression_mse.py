"""Plain regression: an ``nn.MSELoss()`` module instance as the criterion (the PyTorch
examples' style), Adam, a StepLR schedule."""

import argparse

import torch
import torch.nn as nn
from _trace import Trace, grad_norm

parser = argparse.ArgumentParser()
parser.add_argument("--out")
args = parser.parse_args()
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(5, 32), nn.Tanh(), nn.Linear(32, 1))
criterion = nn.MSELoss()
opt = torch.optim.Adam(model.parameters(), lr=1e-2)
sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
g = torch.Generator().manual_seed(8)
x = torch.randn(80, 5, generator=g)
y = (x @ torch.randn(5, 1, generator=g)).sin()
trace = Trace()
trace.set("names", [n for n, _ in model.named_parameters()])
for step in range(8):
    opt.zero_grad()
    loss = criterion(model(x[step % 2 :: 2]), y[step % 2 :: 2])
    loss.backward()
    trace.add("loss", loss.item())
    trace.add("grad_norm", grad_norm(model.parameters()))
    trace.add("lr", sched.get_last_lr()[0])
    opt.step()
    sched.step()
    print(f"step {step} mse {loss.item():.5f}")
trace.save(model.state_dict())
