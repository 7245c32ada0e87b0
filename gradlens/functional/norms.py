"""Fused per-tensor norms: one ``torch._foreach_norm`` per (device, dtype) group, no host sync."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch
from torch import Tensor

from gradlens.instrument.distributed import local

__all__ = ["NormPlan", "measurable", "nonfinite_counts", "tensor_norms"]


def measurable(t: Tensor) -> Tensor:
    """A dense real tensor with ``t``'s L2 norm and non-finite entries: a sparse tensor's
    stored values (COO coalesced first: repeated indices add up), a complex tensor's real view
    (``|a + bi|² = a² + b²``). Others as they are. Sparse gradients come from
    ``nn.Embedding(sparse=True)``; complex parameters from spectral layers."""
    if t.layout == torch.sparse_coo:
        t = t.coalesce().values()
    elif t.layout != torch.strided:  # CSR/CSC/BSR/BSC: no repeated entries
        t = t.values()
    if t.is_complex():
        t = torch.view_as_real(t.resolve_conj())
    return t


def _groups(tensors: Sequence[Tensor]) -> dict[tuple[torch.device, torch.dtype], list[int]]:
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = defaultdict(list)
    for i, t in enumerate(tensors):
        groups[(t.device, t.dtype)].append(i)
    return groups


_NARROW = (torch.float32, torch.float16, torch.bfloat16)
_INDEX_CACHE: dict[tuple[tuple[int, ...], torch.device], Tensor] = {}


def _scatter(out: Tensor, idx: list[int], values: list[Tensor]) -> None:
    """out[idx] = values, with the index tensor cached (no host-to-device copy per step)."""
    key = (tuple(idx), out.device)
    index = _INDEX_CACHE.get(key)
    if index is None:
        index = _INDEX_CACHE[key] = torch.tensor(idx, device=out.device)
    out.index_copy_(0, index, torch.stack(values).to(out.device, non_blocking=True))


def tensor_norms(tensors: Sequence[Tensor], device: torch.device | None = None) -> Tensor:
    """L2 norm of each tensor, as one float32 vector on ``device``.

    Computed in float32 whatever the tensors' dtype (a bf16/fp16 norm overflows or rounds),
    with one fused kernel per (device, dtype) group and no host synchronisation. A DTensor
    (FSDP2) gives its local shard's norm; the caller reduces across ranks.

    Example:
        >>> tensor_norms([torch.ones(4), torch.full((2,), 3.0)])
        tensor([2.0000, 4.2426])
    """
    tensors = [measurable(local(t)) for t in tensors]
    if not tensors:
        return torch.zeros(0, device=device)
    out_device = device or tensors[0].device
    groups = _groups(tensors)
    first = tensors[0]
    if len(groups) == 1 and first.dtype in _NARROW and first.device == out_device:
        return torch.stack(torch._foreach_norm(list(tensors), 2, dtype=torch.float32))
    out = torch.empty(len(tensors), dtype=torch.float32, device=out_device)
    for (_, dtype), idx in groups.items():
        group = [tensors[i] for i in idx]
        if dtype.is_floating_point:
            wide = torch.float64 if dtype == torch.float64 else torch.float32
            norms = [n.float() for n in torch._foreach_norm(group, 2, dtype=wide)]
        else:
            norms = [torch.linalg.vector_norm(t.float()) for t in group]
        _scatter(out, idx, norms)
    return out


def nonfinite_counts(tensors: Sequence[Tensor], device: torch.device | None = None) -> Tensor:
    """Number of NaN/±Inf entries in each tensor, as a float32 vector on ``device``.

    ``x * 0`` is 0 for finite entries and NaN otherwise; the L0 "norm" counts the NaNs.
    Two fused kernels per group, no host synchronisation.

    Example:
        >>> nonfinite_counts([torch.tensor([1.0, float("nan"), float("inf")]), torch.ones(2)])
        tensor([2., 0.])
    """
    tensors = [measurable(local(t)) for t in tensors]
    if not tensors:
        return torch.zeros(0, device=device)
    out_device = device or tensors[0].device
    out = torch.zeros(len(tensors), dtype=torch.float32, device=out_device)
    for (_, dtype), idx in _groups(tensors).items():
        if not dtype.is_floating_point:
            continue  # integer tensors are always finite
        group = [tensors[i] for i in idx]
        # Count in float32 at least: a bf16 count would be exact only up to 256.
        wide = torch.float64 if dtype == torch.float64 else torch.float32
        counts = torch._foreach_norm(torch._foreach_mul(group, 0.0), 0, dtype=wide)
        _scatter(out, idx, [c.float() for c in counts])
    return out


class NormPlan:
    """Norms of a fixed list of same-shaped tensor lists, planned once for speed.

    For tensors shaped like ``template`` (parameters, their gradients, their saved copies):
    on the GPU one fused ``_foreach_norm``; on the CPU, large float32 tensors go through a
    BLAS ``dot`` (≈1.6× faster there, and more accurate) and the rest through
    ``_foreach_norm``. Falls back to :func:`tensor_norms` for anything unusual.

    Example:
        >>> plan = NormPlan([torch.ones(4), torch.ones(100_000)])
        >>> plan([torch.ones(4), torch.full((100_000,), 2.0)])
        tensor([  2.0000, 632.4556])
    """

    BLAS_MIN_NUMEL = 1 << 16

    def __init__(self, template: Sequence[Tensor]) -> None:
        self.n = len(template)
        first = template[0] if template else None
        self.device = first.device if first is not None else torch.device("cpu")
        self.simple = all(
            type(t) in (Tensor, torch.nn.Parameter)
            and t.device == self.device
            and t.dtype in _NARROW
            for t in template
        )
        cpu = self.device.type == "cpu"
        self.blas = [
            i
            for i, t in enumerate(template)
            if cpu and t.dtype == torch.float32 and t.numel() >= self.BLAS_MIN_NUMEL
        ]
        big = set(self.blas)
        self.rest = [i for i in range(self.n) if i not in big]
        order = self.blas + self.rest
        self._inverse = torch.tensor([order.index(i) for i in range(self.n)], dtype=torch.long)

    def __call__(self, tensors: Sequence[Tensor]) -> Tensor:
        if not self.simple or len(tensors) != self.n:
            return tensor_norms(tensors, self.device)
        try:
            return self._fused(tensors)
        except (RuntimeError, NotImplementedError):
            # Gradients unlike their parameters: sparse (``Embedding(sparse=True)``). Checking
            # each tensor's layout every step would cost Python per tensor; this happens once.
            self.simple = False
            return tensor_norms(tensors, self.device)

    def _fused(self, tensors: Sequence[Tensor]) -> Tensor:
        if not self.blas:
            return torch.stack(torch._foreach_norm(list(tensors), 2, dtype=torch.float32))
        parts = [
            torch.dot(t.reshape(-1), t.reshape(-1)).sqrt()
            for t in map(tensors.__getitem__, self.blas)
        ]
        if self.rest:
            rest = [tensors[i] for i in self.rest]
            parts += torch._foreach_norm(rest, 2, dtype=torch.float32)
        return torch.stack(parts).index_select(0, self._inverse)
