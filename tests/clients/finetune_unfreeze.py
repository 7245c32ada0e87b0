"""Transfer-learning fine-tuning: a frozen backbone under a new head, unfrozen mid-training.

``--mode add_group``: the optimizer first holds the head only; at step ``--unfreeze`` the
backbone gets ``requires_grad_(True)`` and its own param group (``add_param_group``, lower lr).
``--mode all_params``: the optimizer holds every parameter from the start, the backbone's
with ``requires_grad=False`` until it is unfrozen (torch skips parameters without a gradient).
An auxiliary head is used on even steps only: it has no gradient on odd ones
(``zero_grad()`` sets gradients to None). Gradients are clipped with
``clip_grad_norm_(model.parameters(), …)``: the frozen backbone's parameters come first.
"""

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F
from _trace import Trace, grad_norm

parser = argparse.ArgumentParser()
parser.add_argument("--out")
parser.add_argument("--mode", choices=["add_group", "all_params"], default="add_group")
parser.add_argument("--steps", type=int, default=10)
parser.add_argument("--unfreeze", type=int, default=4)
args = parser.parse_args()
torch.manual_seed(0)


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
        self.head = nn.Linear(32, 4)
        self.aux = nn.Linear(32, 1)

    def forward(self, x, with_aux=False):
        h = self.backbone(x)
        return self.head(h), (self.aux(h) if with_aux else None)


model = Classifier()
model.backbone.requires_grad_(False)  # "pretrained": frozen for the first epochs
if args.mode == "add_group":
    opt = torch.optim.AdamW(
        [{"params": model.head.parameters()}, {"params": model.aux.parameters()}], lr=1e-2
    )
else:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
g = torch.Generator().manual_seed(1)
x, y = torch.randn(96, 8, generator=g), torch.randint(0, 4, (96,), generator=g)
target = torch.randn(96, 1, generator=g)
trace = Trace()
trace.set("names", [n for n, _ in model.named_parameters()])
for step in range(args.steps):
    if step == args.unfreeze:
        model.backbone.requires_grad_(True)
        if args.mode == "add_group":
            opt.add_param_group({"params": model.backbone.parameters(), "lr": 1e-3})
        print(f"step {step}: backbone unfrozen")
    xb, yb, tb = x[step % 3 :: 3], y[step % 3 :: 3], target[step % 3 :: 3]
    logits, aux = model(xb, with_aux=step % 2 == 0)
    loss = F.cross_entropy(logits, yb)
    if aux is not None:
        loss = loss + 0.1 * F.mse_loss(aux, tb)
    opt.zero_grad()
    loss.backward()
    trace.add("loss", loss.item())
    trace.add("grad_norm", grad_norm(model.parameters()))
    backbone = [p for p in model.backbone.parameters() if p.grad is not None]
    trace.add("backbone_grad_norm", grad_norm(backbone) if backbone else 0.0)
    total = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.3)
    trace.add("clip_coef", min(1.0, 0.3 / (total.item() + 1e-6)))
    opt.step()
    print(f"step {step} loss {loss.item():.5f} groups {len(opt.param_groups)}")
trace.save(model.state_dict())
