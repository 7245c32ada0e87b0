"""A Lookahead wrapper (Zhang et al. 2019) as small repositories write it: an ``Optimizer``
subclass that shares its base optimizer's parameter groups, calls ``base.step()`` inside its
own ``step()`` and every k steps pulls the weights towards slow weights in place. The script
steps the wrapper only; the base optimizer's step runs inside it."""

import argparse
from collections import defaultdict

import torch
import torch.nn.functional as F
from _trace import Trace, grad_norm


class Lookahead(torch.optim.Optimizer):
    def __init__(self, base, k=3, alpha=0.5):
        self.base, self.k, self.alpha = base, k, alpha
        self.param_groups = base.param_groups
        self.defaults = base.defaults
        self.state = defaultdict(dict)
        self._optimizer_step_pre_hooks = {}
        self._optimizer_step_post_hooks = {}
        self.steps = 0
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p]["slow"] = p.detach().clone()

    def step(self, closure=None):
        loss = self.base.step(closure)
        self.steps += 1
        if self.steps % self.k == 0:
            with torch.no_grad():
                for group in self.param_groups:
                    for p in group["params"]:
                        slow = self.state[p]["slow"]
                        slow.add_(p - slow, alpha=self.alpha)
                        p.copy_(slow)
        return loss


parser = argparse.ArgumentParser()
parser.add_argument("--out")
args = parser.parse_args()
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
opt = Lookahead(torch.optim.Adam(model.parameters(), lr=0.01))
g = torch.Generator().manual_seed(1)
x, y = torch.randn(64, 8, generator=g), torch.randint(0, 3, (64,), generator=g)
trace = Trace()
trace.set("names", [n for n, _ in model.named_parameters()])
for step in range(7):
    opt.zero_grad()
    loss = F.cross_entropy(model(x[step % 2 :: 2]), y[step % 2 :: 2])
    loss.backward()
    trace.add("loss", loss.item())
    trace.add("grad_norm", grad_norm(model.parameters()))
    opt.step()
    print(f"step {step} loss {loss.item():.6f}")
trace.save(model.state_dict())
