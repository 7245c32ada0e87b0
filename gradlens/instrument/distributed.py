"""Multi-process training (torchrun, DDP, FSDP2): who writes, what is reduced, and how.

- Every rank runs the same hooks, so collectives are issued in the same order everywhere;
  only the *writing* is rank-dependent: rank 0 writes the run-wide tables, every rank writes
  its own rows of the ``ranks`` table (files tagged ``r<rank>``).
- Per step, one asynchronous all-reduce (SUM) of the captured row: squared per-tensor norms of
  local shards add up to the global squared norms (FSDP2/DTensor), replicated tensors (DDP)
  are divided back by their replication factor, and the loss becomes the mean over ranks.
  No per-tensor collective, and gradlens never waits on a collective without a timeout.
- The run directory is created by rank 0; the others read its name from a pointer file keyed
  by the torchrun run id (no collective needed before the script initialises its group).
"""

from __future__ import annotations

import datetime
import math
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gradlens.store import create_run_dir

__all__ = [
    "WAIT_TIMEOUT",
    "DistInfo",
    "all_reduce_async",
    "dist_info",
    "group_ready",
    "remove_pointer",
    "replication_factors",
    "shared_run_dir",
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


def _pointer(runs_dir: Path, name: str) -> Path:
    run_id = os.environ.get("TORCHELASTIC_RUN_ID") or os.environ.get("MASTER_PORT", "local")
    return runs_dir / f".gradlens-{re.sub(r'[^A-Za-z0-9_.-]', '_', run_id)}-{name}"


def shared_run_dir(runs_dir: Path, name: str, info: DistInfo, timeout: float = 300.0) -> Path:
    """Rank 0 creates the run folder; other ranks wait for its name in a pointer file."""
    pointer = _pointer(runs_dir, name)
    if info.main:
        run_dir = create_run_dir(runs_dir, name)
        tmp = pointer.with_name(pointer.name + ".tmp")
        tmp.write_text(run_dir.name)
        os.replace(tmp, pointer)
        return run_dir
    deadline = time.monotonic() + timeout
    while not pointer.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"rank {info.rank}: rank 0 created no run folder in {timeout:.0f} s")
        time.sleep(0.05)
    return runs_dir / pointer.read_text().strip()


def remove_pointer(runs_dir: Path, run_name: str) -> None:
    """Rank 0, at the end: the pointer file is no longer needed (the folder name may differ
    from the requested one by a ``-2`` suffix, so look for the file that names it)."""
    for path in runs_dir.glob(".gradlens-*"):
        try:
            if path.read_text().strip() == run_name:
                path.unlink(missing_ok=True)
        except OSError:
            continue


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
