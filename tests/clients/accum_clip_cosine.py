"""Gradient accumulation (loss / accum per micro-batch), clip_grad_norm_ at a low threshold
(clips most steps), a cosine schedule (LambdaLR) and zero_grad(set_to_none=True)."""

import argparse
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from _trace import Trace

parser = argparse.ArgumentParser()
parser.add_argument("--out")
args = parser.parse_args()
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(12, 48), nn.GELU(), nn.Linear(48, 5))
opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
total, accum = 10, 3
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
g = torch.Generator().manual_seed(2)
data = [
    (torch.randn(16, 12, generator=g), torch.randint(0, 5, (16,), generator=g)) for _ in range(6)
]
trace = Trace()
trace.set("names", [n for n, _ in model.named_parameters()])
for step in range(total):
    step_loss = 0.0
    for micro in range(accum):
        x, y = data[(step * accum + micro) % len(data)]
        loss = F.cross_entropy(model(x), y) / accum
        loss.backward()
        step_loss += loss.item()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.05)
    trace.add("clip_coef", min(1.0, 0.05 / (norm.item() + 1e-6)))
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    trace.add("loss", step_loss)
    trace.add("grad_norm", norm.item())
    print(f"step {step} loss {step_loss:.5f} lr {sched.get_last_lr()[0]:.6f}")
trace.save(model.state_dict())
