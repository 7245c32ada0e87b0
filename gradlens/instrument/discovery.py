"""Finding the models a script trains, and naming their parameters.

A global forward pre-hook notes every module that runs until the first optimizer step (or
the first backward, for manual updates); the root modules are those noted modules that are
not inside another noted module. The global hook is then removed, so steady-state training
pays for one hook call per root forward, not one per submodule.
"""

from __future__ import annotations

import gc
import re
import warnings
import weakref
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parameter import is_lazy
from torch.utils.hooks import RemovableHandle

from gradlens.instrument.tracing import tracing

__all__ = [
    "ModuleDiscovery",
    "ParameterNamer",
    "clean_name",
    "owning_roots",
    "parameter_names",
]

# Wrapper segments that are not part of the user's model structure.
_WRAPPERS = re.compile(
    r"(^|\.)(_orig_mod|module|_fsdp_wrapped_module|_checkpoint_wrapped_module)(?=\.)"
)


def clean_name(name: str) -> str:
    """``_orig_mod.module.fc.weight`` → ``fc.weight`` (torch.compile, DDP, FSDP wrappers)."""
    previous = None
    while previous != name:
        previous, name = name, _WRAPPERS.sub(r"\1", name).lstrip(".")
    return name


def parameter_names(roots: Iterable[nn.Module]) -> dict[int, str]:
    """``id(param) → clean name`` over ``roots``; several roots get a class-name prefix."""
    roots = list(roots)
    names: dict[int, str] = {}
    for root in roots:
        prefix = f"{type(_unwrap(root)).__name__}." if len(roots) > 1 else ""
        for name, param in root.named_parameters():
            names.setdefault(id(param), prefix + clean_name(name))
    return names


def _unwrap(module: nn.Module) -> nn.Module:
    for attr in ("_orig_mod", "module"):
        inner = getattr(module, attr, None)
        if isinstance(inner, nn.Module):
            return _unwrap(inner)
    return module


_COMPILE_WARNING = r"Using `torch.compile\(module\)` when"


class ModuleDiscovery:
    """Collects root modules seen in forward while enabled."""

    def __init__(self) -> None:
        self._seen: weakref.WeakSet[nn.Module] = weakref.WeakSet()
        self._roots: list[weakref.ref[nn.Module]] = []
        self._handle: RemovableHandle | None = None
        self._filter: Any = None

    @property
    def enabled(self) -> bool:
        return self._handle is not None

    def enable(self) -> None:
        if self._handle is None:
            # torch.compile warns that global hooks also fire for its OptimizedModule wrapper;
            # discovery expects exactly that (the wrapper is the root, its names are cleaned).
            # The filter lives only while the hook does.
            warnings.filterwarnings("ignore", message=_COMPILE_WARNING)
            self._filter = warnings.filters[0]
            self._handle = nn.modules.module.register_module_forward_pre_hook(self._note)

    def disable(self) -> None:
        """Stop watching and settle which of the modules seen are roots."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
            if self._filter in warnings.filters:
                warnings.filters.remove(self._filter)  # type: ignore[attr-defined]
                warnings._filters_mutated()  # type: ignore[attr-defined]
        self.settle()

    def settle(self) -> list[nn.Module]:
        """Fold the modules seen so far into the root list; returns the new roots."""
        seen = list(self._seen)
        self._seen = weakref.WeakSet()
        if not seen:
            return []
        known = self.roots()
        inside: set[int] = set()
        for module in [*known, *seen]:
            inside.update(id(m) for m in module.modules() if m is not module)
        new = [
            m
            for m in seen
            if id(m) not in inside
            and all(m is not k for k in known)
            and any(True for _ in m.parameters())
        ]
        # Deterministic order: the module with the most parameters first.
        new.sort(key=lambda m: -_size(m))
        self._roots = [r for r in self._roots if r() is not None and id(r()) not in inside]
        self._roots += [weakref.ref(m) for m in new]
        return new

    def roots(self) -> list[nn.Module]:
        return [m for r in self._roots if (m := r()) is not None]

    def _note(self, module: nn.Module, args: Any) -> None:
        if not tracing() and not isinstance(module, torch.fx.GraphModule):
            self._seen.add(module)  # (GraphModules are compiled graphs, not user models)


def _size(module: nn.Module) -> int:
    """Entries of the module's parameters; lazy ones (``nn.LazyLinear`` before its first
    forward, when the optimizer may already hold them) have none yet."""
    return sum(p.numel() for p in module.parameters() if not is_lazy(p))


def owning_roots(params: Iterable[Tensor]) -> list[nn.Module]:
    """The outermost live modules that hold any of ``params`` (found once, through ``gc``).

    Names do not depend on how a script calls its model: a closure-driven loop (LBFGS,
    Lightning), a module whose ``forward()`` is called directly, or a model wrapped in a
    ``LightningModule`` are named from the module that owns the parameters, as
    ``named_parameters()`` of that module names them.
    """
    wanted = {id(p) for p in params}
    # type(), not isinstance: no proxy's __class__ runs
    modules = [o for o in gc.get_objects() if issubclass(type(o), nn.Module)]
    inside: set[int] = set()
    for module in modules:
        inside.update(id(m) for m in module.modules() if m is not module)
    roots = [
        m
        for m in modules
        if id(m) not in inside
        and not isinstance(m, torch.fx.GraphModule)
        and any(id(p) in wanted for p in m.parameters())
    ]
    roots.sort(key=lambda m: -_size(m))
    return roots


class ParameterNamer:
    """Stable, unique parameter names over a whole run, whatever the optimizers.

    A root module's parameters are named as its ``named_parameters()`` names them (wrapper
    segments removed). When a run trains several roots (GAN, forward-forward layers), each
    root's names get its class name as a prefix — ``Generator.fc.weight`` — and
    ``Layer[1].weight`` for the second root of the same class. The roots known at the first
    capture are named together; a root that appears later keeps the names already given and
    is prefixed. Names never collide across optimizers.

    A tensor keeps the name it was given for the whole run (a head replaced by a new module
    keeps its name on the rows of the old tensors while they are recorded). A name held by a
    tensor no longer recorded (its optimizer gone) passes to the tensor that now has it in
    ``named_parameters()``; one still recorded makes the newcomer ``name#2``.
    """

    def __init__(self) -> None:
        self._prefix: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()
        self._classes: dict[str, int] = {}
        self._given: dict[str, weakref.ref[Tensor]] = {}  # name → the tensor holding it
        self._name_of: dict[int, tuple[weakref.ref[Tensor], str]] = {}  # id(tensor) → its name

    def names(
        self,
        params: list[Tensor],
        roots: list[nn.Module],
        fallback: dict[int, str] | None = None,
        recorded: set[int] | None = None,
    ) -> list[str]:
        """Names of ``params``, given the roots that own them (see :func:`owning_roots`);
        ``recorded``: id() of the tensors still being recorded (None: all named so far)."""
        new = [r for r in roots if r not in self._prefix]
        several = len(new) > 1 or bool(new and len(self._prefix))
        for root in new:
            self._prefix[root] = self._class_prefix(root) if several else ""
        known: dict[int, str] = {}
        for root in roots:
            prefix = self._prefix[root]
            for name, param in root.named_parameters():
                known.setdefault(id(param), prefix + clean_name(name))
        fallback = fallback or {}
        out = []
        for i, p in enumerate(params):
            prior = self._name_of.get(id(p))
            if prior is not None and prior[0]() is p and self._holder(prior[1]) is p:
                out.append(prior[1])  # the name it was given, whatever owns it now
                continue
            name = known.get(id(p)) or fallback.get(id(p)) or f"param{i}"
            out.append(self._unique(name, p, recorded))
        return out

    def _holder(self, name: str) -> Tensor | None:
        ref = self._given.get(name)
        return ref() if ref is not None else None

    def _class_prefix(self, root: nn.Module) -> str:
        cls = type(_unwrap(root)).__name__
        k = self._classes.get(cls, 0)
        self._classes[cls] = k + 1
        return f"{cls}." if k == 0 else f"{cls}[{k}]."

    def _unique(self, name: str, param: Tensor, recorded: set[int] | None) -> str:
        candidate, k = name, 2
        while True:
            holder = self._holder(candidate)
            free = holder is None or (recorded is not None and id(holder) not in recorded)
            if holder is param or free:
                self._given[candidate] = weakref.ref(param)
                self._name_of[id(param)] = (weakref.ref(param), candidate)
                return candidate
            candidate, k = f"{name}#{k}", k + 1
