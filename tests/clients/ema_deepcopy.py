"""EMA and best-model idioms: copy.deepcopy of the model being trained (at start and whenever
validation improves), an AveragedModel, pickle of the live model and optimizer, and
torch.save of the optimizer object."""

import argparse
import copy
import io
import pickle

import torch
import torch.nn as nn
import torch.nn.functional as F
from _trace import Trace, grad_norm

parser = argparse.ArgumentParser()
parser.add_argument("--out")
args = parser.parse_args()
torch.manual_seed(0)

model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
ema = copy.deepcopy(model).requires_grad_(False)
swa = torch.optim.swa_utils.AveragedModel(model)
opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
g = torch.Generator().manual_seed(1)
x, y = torch.randn(128, 8, generator=g), torch.randint(0, 4, (128,), generator=g)
trace = Trace()
trace.set("names", [n for n, _ in model.named_parameters()])
best, best_model = float("inf"), None
for step in range(12):
    opt.zero_grad()
    loss = F.cross_entropy(model(x[step % 4 :: 4]), y[step % 4 :: 4])
    loss.backward()
    trace.add("loss", loss.item())
    trace.add("grad_norm", grad_norm(model.parameters()))
    opt.step()
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.mul_(0.9).add_(p, alpha=0.1)
    swa.update_parameters(model)
    model.eval()
    with torch.no_grad():
        val = F.cross_entropy(ema(x), y).item()
    model.train()
    if val < best:
        best, best_model = val, copy.deepcopy(model)
blob = pickle.dumps((model, opt))
buffer = io.BytesIO()
torch.save(opt, buffer)
print(f"best ema loss {best:.4f}; pickled {len(blob) > 0}; saved {buffer.tell() > 0}")
print(f"best model differs from ema: {not torch.equal(best_model[0].weight, ema[0].weight)}")
trace.save(model.state_dict(), ema.state_dict(), swa.state_dict())
