"""PyTorch's "compile the optimizer" recipes: ``opt.step()`` (and, with a tensor learning rate,
``sched.step()``) inside a ``torch.compile``'d function, where the optimizer's hooks do not
run; a bias-free Linear stack trained on a fixed batch, as in the recipe."""

import argparse

import torch
import torch.nn.functional as F
from _trace import Trace, grad_norm

parser = argparse.ArgumentParser()
parser.add_argument("--out")
parser.add_argument("--backend", default="inductor")
parser.add_argument("--iters", type=int, default=8)
args = parser.parse_args()

torch.manual_seed(0)
model = torch.nn.Sequential(*[torch.nn.Linear(32, 32, False) for _ in range(5)])
input = torch.rand(16, 32)
target = torch.rand(16, 32)
opt = torch.optim.Adam(model.parameters(), lr=torch.tensor(0.01))
sched = torch.optim.lr_scheduler.LinearLR(opt, total_iters=args.iters)


@torch.compile(fullgraph=False, backend=args.backend)
def fn():
    opt.step()
    sched.step()


trace = Trace()
trace.set("names", [n for n, _ in model.named_parameters()])
for _ in range(args.iters):
    opt.zero_grad(set_to_none=True)
    loss = F.mse_loss(model(input), target)
    loss.backward()
    trace.add("loss", loss.item())
    trace.add("grad_norm", grad_norm(model.parameters()))
    trace.add("lr", opt.param_groups[0]["lr"].item())
    fn()
    print(f"loss {loss.item():.6f} lr {opt.param_groups[0]['lr'].item():.6f}")
trace.save(model.state_dict())
