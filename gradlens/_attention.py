"""Second derivatives and forward AD through attention: detect the fused kernels' gaps and
fall back to the math backend, which both support."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TypeVar

__all__ = ["math_attention", "unsupported", "with_math_fallback"]

T = TypeVar("T")


def unsupported(exc: BaseException) -> bool:
    """True for 'derivative … not implemented' / 'forward AD … does not support' errors."""
    text = str(exc)
    return isinstance(exc, RuntimeError | NotImplementedError) and any(
        key in text
        for key in ("not implemented", "does not support", "not supported", "NotImplemented")
    )


@contextlib.contextmanager
def math_attention() -> Iterator[None]:
    """``F.scaled_dot_product_attention`` through its math backend (differentiable twice)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        yield


def with_math_fallback(compute: Callable[[], T]) -> T:
    """``compute()``, retried under the math attention backend if a kernel lacks the derivative."""
    try:
        return compute()
    except Exception as exc:
        if not unsupported(exc):
            raise
    with math_attention():
        return compute()
