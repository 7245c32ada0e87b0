"""LBFGS with a closure (the optimizer calls it several times per step)."""

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F
from _trace import Trace, grad_norm

parser = argparse.ArgumentParser()
parser.add_argument("--out")
args = parser.parse_args()
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1))
x = torch.randn(64, 3)
y = (x**2).sum(1, keepdim=True)
opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=5, history_size=5)
trace = Trace()
trace.set("names", [n for n, _ in model.named_parameters()])
for step in range(4):
    first = []

    def closure():
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        if not first:  # the gradient at the parameters the step starts from
            first.append(grad_norm(model.parameters()))
        return loss

    loss = opt.step(closure)
    trace.add("loss", loss.item())
    trace.add("grad_norm", first[0])
    print(f"step {step}: loss {loss.item():.6f}")
trace.save(model.state_dict())
