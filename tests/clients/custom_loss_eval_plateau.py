"""A classifier trained with a hand-written loss (label smoothing as
``-(log_softmax * soft_targets).sum(1).mean()``, no ``F.cross_entropy``) plus an
``nn.MSELoss()`` module on an auxiliary output; every 3 steps ``model.eval()`` and a
validation pass under ``torch.inference_mode()`` whose loss drives ``ReduceLROnPlateau``."""

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F
from _trace import Trace, grad_norm

parser = argparse.ArgumentParser()
parser.add_argument("--out")
args = parser.parse_args()
torch.manual_seed(0)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 24), nn.SiLU(), nn.Dropout(0.1))
        self.logits = nn.Linear(24, 5)
        self.recon = nn.Linear(24, 6)

    def forward(self, x):
        h = self.body(x)
        return self.logits(h), self.recon(h)


def smoothed_nll(logits, target, smoothing=0.1):
    soft = torch.full_like(logits, smoothing / (logits.size(1) - 1))
    soft.scatter_(1, target.unsqueeze(1), 1.0 - smoothing)
    return -(F.log_softmax(logits, dim=1) * soft).sum(1).mean()


model = Net()
opt = torch.optim.Adam(model.parameters(), lr=5e-2)
plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=0)
recon_loss = nn.MSELoss()
g = torch.Generator().manual_seed(4)
x, y = torch.randn(160, 6, generator=g), torch.randint(0, 5, (160,), generator=g)
x_val, y_val = torch.randn(40, 6, generator=g), torch.randint(0, 5, (40,), generator=g)
trace = Trace()
trace.set("names", [n for n, _ in model.named_parameters()])
evals = []
for step in range(12):
    model.train()
    xb, yb = x[(step * 32) % 160 :][:32], y[(step * 32) % 160 :][:32]
    logits, recon = model(xb)
    loss = smoothed_nll(logits, yb) + 0.1 * recon_loss(recon, xb)
    opt.zero_grad(set_to_none=False)
    loss.backward()
    trace.add("loss", loss.item())
    trace.add("grad_norm", grad_norm(model.parameters()))
    trace.add("lr", opt.param_groups[0]["lr"])
    opt.step()
    if step % 3 == 2:
        model.eval()
        with torch.inference_mode():
            val_logits, _ = model(x_val)
            val_loss = smoothed_nll(val_logits, y_val).item()
            val_ce = F.cross_entropy(val_logits, y_val).item()
        evals.append([step, val_ce])
        plateau.step(val_loss)
        print(f"step {step}: val {val_loss:.4f} ce {val_ce:.4f} lr {opt.param_groups[0]['lr']}")
trace.set("evals", evals)
trace.save(model.state_dict())
