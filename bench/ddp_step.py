"""A DDP training loop that times its own steps (used by bench/distributed.py).

torchrun --nproc_per_node=2 bench/ddp_step.py OUT.json [STEPS]
"""

import json
import sys
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
model = DistributedDataParallel(
    nn.Sequential(
        nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)
    )
)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 60
x = torch.randn(256, 256)
y = torch.randint(0, 10, (256,))
times = []
for step in range(steps + 10):
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
    if step >= 10:  # warm-up excluded
        times.append(time.perf_counter() - start)
if rank == 0:
    with open(sys.argv[1], "w") as out:
        json.dump({"step_s": sorted(times)[len(times) // 2], "world": world}, out)
dist.destroy_process_group()
