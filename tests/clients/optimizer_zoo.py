"""One model trained in phases, each with a different torch optimizer made anew (Adagrad,
RMSprop, SGD with Nesterov momentum, Adamax, NAdam, RAdam): the "switch optimizer mid-run"
idiom. The script measures its own update ‖θ_after − θ_before‖ every step."""

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F
from _trace import Trace, grad_norm

parser = argparse.ArgumentParser()
parser.add_argument("--out")
parser.add_argument("--steps", type=int, default=3)
args = parser.parse_args()
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(7, 20), nn.Tanh(), nn.Linear(20, 3))
makers = [
    lambda ps: torch.optim.Adagrad(ps, lr=0.05),
    lambda ps: torch.optim.RMSprop(ps, lr=1e-2, momentum=0.5),
    lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4),
    lambda ps: torch.optim.Adamax(ps, lr=1e-2),
    lambda ps: torch.optim.NAdam(ps, lr=1e-2),
    lambda ps: torch.optim.RAdam(ps, lr=1e-2, decoupled_weight_decay=True, weight_decay=0.01),
]
g = torch.Generator().manual_seed(5)
x, y = torch.randn(64, 7, generator=g), torch.randint(0, 3, (64,), generator=g)
trace = Trace()
trace.set("names", [n for n, _ in model.named_parameters()])
for make in makers:
    opt = make(model.parameters())
    for step in range(args.steps):
        opt.zero_grad()
        loss = F.cross_entropy(model(x[step::2]), y[step::2])
        loss.backward()
        trace.add("loss", loss.item())
        trace.add("grad_norm", grad_norm(model.parameters()))
        before = [p.detach().clone() for p in model.parameters()]
        opt.step()
        moved = [(p.detach() - b).double().norm() for p, b in zip(model.parameters(), before)]
        trace.add("update_norm", torch.stack(moved).norm())
    print(f"{type(opt).__name__}: loss {loss.item():.4f}")
trace.save(model.state_dict())
