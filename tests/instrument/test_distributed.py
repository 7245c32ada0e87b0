"""The DTensor helper set of ``instrument.distributed`` against real DTensors (a one-process
gloo group) and crafted meshes: local shards, sharded detection, replication factors."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Replicate, Shard, distribute_tensor

from gradlens.functional.norms import nonfinite_counts, tensor_norms
from gradlens.instrument.distributed import is_sharded, local, replication_factors


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    if dist.is_initialized():
        pytest.skip("a process group is already initialised")
    store = dist.FileStore(str(tmp_path_factory.mktemp("pg") / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        dist.destroy_process_group()


def test_local_of_a_plain_tensor_is_the_tensor_itself():
    t = torch.arange(6.0)
    assert local(t) is t
    assert not is_sharded([t, torch.ones(2)])
    assert not is_sharded([])


def test_local_of_a_dtensor_is_its_plain_local_shard(mesh):
    full = torch.arange(12.0).reshape(4, 3)
    sharded = distribute_tensor(full, mesh, [Shard(0)])
    shard = local(sharded)
    assert type(shard) is torch.Tensor
    torch.testing.assert_close(shard, full)  # one rank holds the whole tensor
    assert is_sharded([torch.ones(2), sharded])
    assert is_sharded([distribute_tensor(full, mesh, [Replicate()])])


def test_functional_norms_read_the_local_shard(mesh):
    full = torch.tensor([[3.0, 4.0], [float("nan"), 0.0]])
    sharded = distribute_tensor(full, mesh, [Shard(0)])
    norms = tensor_norms([sharded[:1]])
    assert type(norms) is torch.Tensor
    torch.testing.assert_close(norms, torch.tensor([5.0]))
    torch.testing.assert_close(nonfinite_counts([sharded, torch.ones(3)]), torch.tensor([1.0, 0.0]))


class _Mesh:
    def __init__(self, *sizes: int) -> None:
        self.sizes = sizes

    def size(self, dim: int) -> int:
        return self.sizes[dim]


class _Placement:
    def __init__(self, shard: bool) -> None:
        self.shard = shard

    def is_shard(self) -> bool:
        return self.shard


class _Param:
    def __init__(self, mesh: _Mesh, *shard: bool) -> None:
        self.device_mesh = mesh
        self.placements = tuple(_Placement(s) for s in shard)


def test_replication_factors_divide_the_world_by_the_sharding_dims():
    hsdp = _Mesh(2, 4)  # 2 replicas × 4 shards, world 8
    params = [
        torch.ones(3),  # DDP: replicated on every rank
        _Param(_Mesh(8), True),  # FSDP2: sharded over all 8 ranks
        _Param(hsdp, False, True),  # HSDP: replicated over the replica dimension
        _Param(hsdp, False, False),  # replicated everywhere
    ]
    assert replication_factors(params, 8) == [8.0, 1.0, 2.0, 8.0]  # type: ignore[arg-type]
