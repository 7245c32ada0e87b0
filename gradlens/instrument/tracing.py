"""Whether the code running now is being traced or transformed rather than run: inside
``torch.compile`` tracing, or inside a ``torch.func`` transform (``vmap``, ``grad``, ``jvp``:
Opacus-style per-sample gradients). gradlens's hooks step aside there: their tensors would be
the transform's wrapped tensors, which escape it and fail when read later."""

from __future__ import annotations

import torch

__all__ = ["tracing"]

_functorch_level = getattr(torch._C._functorch, "maybe_current_level", lambda: None)


def tracing() -> bool:
    """True inside ``torch.compile`` tracing or a ``torch.func`` transform (~0.3 µs)."""
    return bool(torch.compiler.is_compiling()) or _functorch_level() is not None
