"""Multi-process training (torchrun, DDP, FSDP2): who writes, what is reduced, and how.

- Every rank runs the same hooks, so collectives are issued in the same order everywhere;
  only the *writing* is rank-dependent: rank 0 writes the run-wide tables, every rank writes
  its own rows of the ``ranks`` table (files tagged ``r<rank>``).
- Per step, one asynchronous all-reduce (SUM) of the captured row: squared per-tensor norms of
  local shards add up to the global squared norms (FSDP2/DTensor), replicated tensors (DDP)
  are divided back by their replication factor, and the loss becomes the mean over ranks.
  No per-tensor collective, and gradlens never waits on a collective without a timeout.
- FSDP2 parameters are DTensors: the per-tensor math runs on their local shards (``local``).

The ground floor: this module imports nothing from gradlens (the run folder shared by the
ranks lives in ``gradlens.store.shared``).
"""

from __future__ import annotations

import datetime
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "WAIT_TIMEOUT",
    "DistInfo",
    "all_reduce_async",
    "all_reduce_sum",
    "dist_info",
    "group_ready",
    "is_sharded",
    "local",
    "replication_factors",
    "unwrap_data_parallel",
    "wait_all",
]

WAIT_TIMEOUT = datetime.timedelta(seconds=120)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def tag(self) -> str:
        """The file tag of this rank's own rows ("" for rank 0)."""
        return "" if self.rank == 0 else f"r{self.rank}"


def dist_info() -> DistInfo:
    """Rank and world size from torchrun's environment (set before the script starts)."""
    try:
        return DistInfo(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return DistInfo()


def group_ready() -> bool:
    """A default process group exists (the script called ``init_process_group``)."""
    import torch.distributed as dist

    return bool(dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1)


def local(t: Tensor) -> Tensor:
    """A DTensor's local shard (FSDP2), else ``t`` itself.

    Squared norms of the local shards sum over ranks to the global squared norm; the caller
    does the reduction (``replication_factors``, ``all_reduce_async``).
    """
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t


def is_sharded(params: Sequence[Tensor]) -> bool:
    """Some of ``params`` are DTensors (FSDP2): their math must run on ``local`` shards."""
    return any(callable(getattr(p, "to_local", None)) for p in params)


def replication_factors(params: Sequence[Tensor], world: int) -> list[float]:
    """How many ranks hold each tensor's (local) values: summing squared local norms over
    ranks and dividing by this gives the global squared norm.

    A plain tensor (DDP) is replicated on every rank; a DTensor is replicated over the mesh
    dimensions that do not shard it (FSDP2: 1, HSDP: the replica dimension).
    """
    factors = []
    for p in params:
        placements = getattr(p, "placements", None)
        mesh = getattr(p, "device_mesh", None)
        if placements is None or mesh is None:
            factors.append(float(world))
            continue
        shards = math.prod(mesh.size(i) for i, pl in enumerate(placements) if pl.is_shard())
        factors.append(world / shards)
    return factors


def all_reduce_async(tensor: Tensor) -> Any:
    """SUM over ranks, in place, without waiting (returns the work handle)."""
    import torch.distributed as dist

    return dist.all_reduce(tensor, op=dist.ReduceOp.SUM, async_op=True)


def wait_all(works: list[Any], timeout: datetime.timedelta = WAIT_TIMEOUT) -> int:
    """Wait for pending reductions in order; how many completed before one failed (a rank
    gone, or the timeout) — never a hang."""
    done = 0
    for work in works:
        try:
            work.wait(timeout)
        except Exception:
            break
        done += 1
    works.clear()
    return done


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Synchronous SUM over ranks (probes), returned (in place)."""
    import torch.distributed as dist

    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def unwrap_data_parallel(module: torch.nn.Module) -> torch.nn.Module:
    """The model inside DDP / DataParallel (probes must not trigger DDP's own reductions)."""
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    while isinstance(module, DistributedDataParallel | DataParallel):
        module = module.module
    return module
