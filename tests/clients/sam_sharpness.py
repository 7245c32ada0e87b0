"""Sharpness-aware minimization (SAM, Foret et al. 2021) as its popular PyTorch wrapper is
used: an ``Optimizer`` subclass holding the base optimizer and sharing its parameter groups.
Each step backpropagates twice: at w, then at the ascent point w + ρ·g/‖g‖ (moved in place
under ``no_grad``), and the base optimizer steps from w with the second gradient. The script's
loss of a step is the first one (at w); its gradient norm the second (the one applied).

``--form two-steps``: ``first_step()``/``second_step()`` called by the loop; ``--form
closure``: ``step(closure)``, which runs the ascent, the closure and the descent itself."""

import argparse

import torch
import torch.nn.functional as F
from _trace import Trace, grad_norm


class SAM(torch.optim.Optimizer):
    def __init__(self, params, base_optimizer, rho=0.05, **kwargs):
        super().__init__(params, dict(rho=rho, **kwargs))
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups

    @torch.no_grad()
    def first_step(self, zero_grad=False):
        norm = torch.stack(
            [p.grad.norm() for g in self.param_groups for p in g["params"] if p.grad is not None]
        ).norm()
        for group in self.param_groups:
            scale = group["rho"] / (norm + 1e-12)
            for p in group["params"]:
                if p.grad is None:
                    continue
                self.state[p]["w"] = p.detach().clone()
                p.add_(p.grad * scale)  # to the ascent point
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad=False):
        for group in self.param_groups:
            for p in group["params"]:
                if "w" in self.state[p]:
                    p.copy_(self.state[p].pop("w"))  # back to w
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def step(self, closure=None):
        self.first_step(zero_grad=True)
        with torch.enable_grad():
            closure()
        self.second_step()


parser = argparse.ArgumentParser()
parser.add_argument("--out")
parser.add_argument("--form", choices=["two-steps", "closure"], default="two-steps")
args = parser.parse_args()
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
g = torch.Generator().manual_seed(1)
x, y = torch.randn(64, 8, generator=g), torch.randint(0, 3, (64,), generator=g)
trace = Trace()
trace.set("names", [n for n, _ in model.named_parameters()])
for step in range(6):
    batch = slice(step % 2, None, 2)
    loss = F.cross_entropy(model(x[batch]), y[batch])
    loss.backward()
    if args.form == "two-steps":
        opt.first_step(zero_grad=True)
        F.cross_entropy(model(x[batch]), y[batch]).backward()
        trace.add("grad_norm", grad_norm(model.parameters()))
        opt.second_step(zero_grad=True)
    else:

        def closure():
            ascent = F.cross_entropy(model(x[batch]), y[batch])
            ascent.backward()
            trace.add("grad_norm", grad_norm(model.parameters()))
            return ascent

        opt.step(closure)
        opt.zero_grad()
    trace.add("loss", loss.item())
    print(f"step {step} loss {loss.item():.6f}")
trace.save(model.state_dict())
