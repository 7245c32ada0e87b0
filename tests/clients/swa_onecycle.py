"""OneCycleLR for most of training, then stochastic weight averaging (torch.optim.swa_utils):
an ``AveragedModel`` updated every step, ``SWALR`` annealing to a constant lr, and
``update_bn`` recomputing the BatchNorm statistics of the average over a DataLoader."""

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F
from _trace import Trace, grad_norm
from torch.optim.swa_utils import SWALR, AveragedModel, update_bn
from torch.utils.data import DataLoader, TensorDataset

parser = argparse.ArgumentParser()
parser.add_argument("--out")
args = parser.parse_args()
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(6, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 3))
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
epochs, swa_start = 6, 3
g = torch.Generator().manual_seed(7)
data = TensorDataset(torch.randn(96, 6, generator=g), torch.randint(0, 3, (96,), generator=g))
loader = DataLoader(data, batch_size=24, shuffle=True, generator=g)
onecycle = torch.optim.lr_scheduler.OneCycleLR(
    opt, max_lr=0.2, epochs=swa_start, steps_per_epoch=len(loader)
)
swa_model = AveragedModel(model)
swa_sched = SWALR(opt, swa_lr=0.05, anneal_epochs=2)
trace = Trace()
trace.set("names", [n for n, _ in model.named_parameters()])
for epoch in range(epochs):
    for xb, yb in loader:
        opt.zero_grad()
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        trace.add("loss", loss.item())
        trace.add("grad_norm", grad_norm(model.parameters()))
        trace.add("lr", opt.param_groups[0]["lr"])
        opt.step()
        if epoch < swa_start:
            onecycle.step()
    if epoch >= swa_start:
        swa_model.update_parameters(model)
        swa_sched.step()
    print(f"epoch {epoch} loss {loss.item():.4f} lr {opt.param_groups[0]['lr']:.5f}")
update_bn(loader, swa_model)
with torch.no_grad():
    x_all, y_all = data.tensors
    print(f"swa loss {F.cross_entropy(swa_model(x_all), y_all).item():.4f}")
trace.save(model.state_dict(), swa_model.state_dict())
