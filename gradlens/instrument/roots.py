"""Calls of a training script's root modules, seen without touching the modules.

Hooks registered on a module live in its ``__dict__``: ``pickle``, ``copy.deepcopy`` and
``torch.save(model)`` would carry them (and fail on gradlens's thread-bound objects), and
``torch.load(weights_only=True)`` would refuse them. Instead the *class* of each watched root
gets a ``__call__`` wrapper while it is watched; the instance is untouched, so what a script
pickles, copies or saves is exactly what it would be without gradlens. The wrapper costs one
dictionary lookup for other instances of that class, and steps aside entirely while
``torch.compile`` traces (nothing of gradlens's runs inside a graph).
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from typing import Any

from torch import nn

from gradlens.instrument.tracing import tracing

__all__ = ["RootCalls"]

Before = Callable[[nn.Module, tuple[Any, ...], dict[str, Any]], None]
After = Callable[[nn.Module, Any], None]

_MARK = "__gradlens_root_call__"
# id(module) → (weak module, before, after): at most one watcher per module.
_watched: dict[int, tuple[weakref.ref[nn.Module], Before, After]] = {}
# class → (the class's own __call__ before patching, or None if it inherited one)
_patched: dict[type, Any] = {}


def _wrapper(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def __call__(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        entry = _watched.get(id(self))
        if entry is None or entry[0]() is not self or tracing():
            return original(self, *args, **kwargs)
        _, before, after = entry
        before(self, args, kwargs)
        output = None
        try:
            output = original(self, *args, **kwargs)
        finally:
            after(self, output)  # also when forward raised (output None): depth counters
        return output

    setattr(__call__, _MARK, True)
    return __call__


def _patch(cls: type) -> None:
    if cls in _patched or getattr(cls.__call__, _MARK, False):
        return  # already wrapped here or in a base class (calls reach that wrapper)
    _patched[cls] = cls.__dict__.get("__call__")
    setattr(cls, "__call__", _wrapper(cls.__call__))  # noqa: B010


def _unpatch_unused() -> None:
    in_use = {type(m) for ref, _, _ in _watched.values() if (m := ref()) is not None}
    for cls in [c for c in _patched if not any(issubclass(u, c) for u in in_use)]:
        own = _patched.pop(cls)
        if own is None:
            delattr(cls, "__call__")
        else:
            setattr(cls, "__call__", own)  # noqa: B010


class RootCalls:
    """Calls ``before(module, args, kwargs)`` and ``after(module, output)`` around each call
    of the modules added, until :meth:`close`.

    ``before``/``after`` must not raise (the caller guards them) and run outside any
    ``torch.compile`` tracing.
    """

    def __init__(self, before: Before, after: After) -> None:
        self.before = before
        self.after = after
        self._mine: weakref.WeakSet[nn.Module] = weakref.WeakSet()

    def add(self, module: nn.Module) -> bool:
        """Watch ``module``; False if it is already watched (by this or another watcher)."""
        key = id(module)
        entry = _watched.get(key)
        if entry is not None and entry[0]() is module:
            return False
        _watched[key] = (weakref.ref(module, lambda _: _watched.pop(key, None)), *self._pair())
        self._mine.add(module)
        _patch(type(module))
        return True

    def __contains__(self, module: nn.Module) -> bool:
        return module in self._mine

    def close(self) -> None:
        for module in list(self._mine):
            entry = _watched.get(id(module))
            if entry is not None and entry[0]() is module:
                del _watched[id(module)]
        self._mine = weakref.WeakSet()
        _unpatch_unused()

    def _pair(self) -> tuple[Before, After]:
        return self.before, self.after
