"""The same training on one global batch, as 1 process or as N ranks (DDP or FSDP2).

    python distributed_train.py ddp                 # one process, the whole global batch
    torchrun --nproc_per_node=2 distributed_train.py ddp|fsdp   # each rank its slice

Writes nothing itself; run it under `gradlens watch` and compare the runs.
"""

import os
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

mode = sys.argv[1] if len(sys.argv) > 1 else "ddp"
world = int(os.environ.get("WORLD_SIZE", "1"))
rank = int(os.environ.get("RANK", "0"))
if world > 1:
    dist.init_process_group("gloo")

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, 4))
if world > 1 and mode == "ddp":
    from torch.nn.parallel import DistributedDataParallel

    trained = DistributedDataParallel(model)
elif world > 1 and mode == "fsdp":
    from torch.distributed.fsdp import fully_shard

    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    trained = fully_shard(model)
else:
    trained = model
optimizer = torch.optim.SGD(trained.parameters(), lr=0.2, momentum=0.9)

data = torch.Generator().manual_seed(1)
for _step in range(8):
    x = torch.randn(64, 10, generator=data)  # the global batch, the same everywhere
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    x, y = x.chunk(world)[rank], y.chunk(world)[rank]
    optimizer.zero_grad()
    F.cross_entropy(trained(x), y).backward()
    optimizer.step()

if world > 1:
    dist.destroy_process_group()
print(f"rank {rank} done")
