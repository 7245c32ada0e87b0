"""Multi-task learning with one optimizer step per batch and several backward calls: a shared
trunk, two heads, ``loss_a.backward(retain_graph=True)`` then ``loss_b.backward()`` (the
gradients add up; on odd steps ``torch.autograd.backward([loss_a, loss_b])``), every third step a third, regularisation backward; gradients are zeroed
with ``zero_grad(set_to_none=False)``. The script's own step loss is the sum of the losses it
backpropagated."""

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F
from _trace import Trace, grad_norm

parser = argparse.ArgumentParser()
parser.add_argument("--out")
args = parser.parse_args()
torch.manual_seed(0)


class MultiTask(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(10, 32), nn.ReLU())
        self.cls_head = nn.Linear(32, 3)
        self.reg_head = nn.Linear(32, 1)

    def forward(self, x):
        h = self.trunk(x)
        return self.cls_head(h), self.reg_head(h).squeeze(1)


model = MultiTask()
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
g = torch.Generator().manual_seed(3)
x = torch.randn(120, 10, generator=g)
y_cls, y_reg = torch.randint(0, 3, (120,), generator=g), torch.randn(120, generator=g)
trace = Trace()
trace.set("names", [n for n, _ in model.named_parameters()])
for step in range(9):
    xb = x[step % 4 :: 4]
    opt.zero_grad(set_to_none=False)
    logits, pred = model(xb)
    loss_a = F.cross_entropy(logits, y_cls[step % 4 :: 4])
    loss_b = 0.5 * F.mse_loss(pred, y_reg[step % 4 :: 4])
    if step % 2:
        torch.autograd.backward([loss_a, loss_b])  # the same gradients, in one call
    else:
        loss_a.backward(retain_graph=True)
        loss_b.backward()
    total = loss_a.item() + loss_b.item()
    if step % 3 == 0:
        reg = 1e-3 * sum(p.pow(2).sum() for p in model.trunk.parameters())
        reg.backward()
        total += reg.item()
    trace.add("loss", total)
    trace.add("grad_norm", grad_norm(model.parameters()))
    opt.step()
    print(f"step {step} cls {loss_a.item():.4f} reg {loss_b.item():.4f}")
trace.save(model.state_dict())
