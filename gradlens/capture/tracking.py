"""Which parameters are recorded, under which names, by which recorder.

An optimizer is tracked at its first captured step: its trainable parameters get a
:class:`~gradlens.capture.recorder.StepRecorder` and names from the modules that own them
(``instrument.discovery``). Parameters that join its steps later — a frozen backbone unfrozen
with ``requires_grad_(True)``, a group added by ``add_param_group`` — are recorded from the
step they join: the rows so far are handed over and a new recorder covers the new set (its
spike baselines start afresh: the gradient it sees is a different one). Parameters frozen
later (``requires_grad_(False)``, still in the optimizer) leave the set the same way, seen
within ten steps (a look at every recorded tensor costs Python per tensor).

A script that updates parameters by hand (no optimizer) is tracked as one manual-update set
over the models seen in forward. The models found are handed to ``watch`` (the class-level
root-call wrapper, ``instrument.roots``) so their calls are counted; nothing is attached to
the user's objects.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from gradlens.capture.decode import ChunkDecoder
from gradlens.capture.facts import hyperparameters
from gradlens.capture.recorder import StepRecorder
from gradlens.capture.roles import Roles, Tracked
from gradlens.instrument.discovery import ModuleDiscovery, ParameterNamer, owning_roots

__all__ = ["Tracking"]

# (parameters, names, serial, update_lag) → the recorder and the decoder of its rows
MakeRecorder = Callable[[list[Tensor], list[str], int, int], tuple[StepRecorder, ChunkDecoder]]


@dataclass
class _Membership:
    """What an optimizer held when its recorder was made; a change may bring new parameters."""

    groups: int  # len(param_groups)
    count: int  # parameters over all groups
    frozen: list[Tensor]  # those without ``requires_grad`` (not recorded)
    trainable: list[Tensor]  # those recorded
    checks: int = 0  # calls of same()

    FROZEN_EVERY: ClassVar[int] = 10  # steps between looks for recorded tensors frozen since

    @classmethod
    def of(cls, optimizer: torch.optim.Optimizer) -> tuple[list[Tensor], _Membership]:
        """(the trainable parameters, the membership) of ``optimizer`` now."""
        everything = [p for g in optimizer.param_groups for p in g["params"]]
        # A tensor listed twice (a tied weight in ``list(enc.parameters()) +
        # list(dec.parameters())``; torch only warns) is one tensor: recorded once.
        unique = list({id(p): p for p in everything}.values())
        trainable = [p for p in unique if p.requires_grad]
        frozen = [p for p in unique if not p.requires_grad]
        return trainable, cls(len(optimizer.param_groups), len(everything), frozen, trainable)

    def same(self, optimizer: torch.optim.Optimizer) -> bool:
        """No group added, no parameter added or removed, none of the frozen ones unfrozen:
        a few attribute reads per step (one per frozen parameter). Every ``FROZEN_EVERY``
        steps also: none of the recorded ones frozen since (``requires_grad_(False)`` on a
        backbone still in the optimizer: it stops being recorded, not read as 0 each step)."""
        groups = optimizer.param_groups
        self.checks += 1
        return (
            len(groups) == self.groups
            and sum(len(g["params"]) for g in groups) == self.count
            and not any(p.requires_grad for p in self.frozen)
            and (
                self.checks % self.FROZEN_EVERY > 0 or all(p.requires_grad for p in self.trainable)
            )
        )


class Tracking:
    """The optimizers (and manual-update models) being recorded."""

    def __init__(
        self,
        models: Sequence[nn.Module],
        optimizers: Sequence[torch.optim.Optimizer],
        make: MakeRecorder,
        watch: Callable[[nn.Module], Any],
    ) -> None:
        self.models, self.optimizers = list(models), list(optimizers)
        self.auto = not self.models and not self.optimizers
        self.make, self.watch = make, watch
        self.roles = Roles()
        self.discovery = ModuleDiscovery()
        self.namer = ParameterNamer()
        self.known: weakref.WeakSet[torch.optim.Optimizer] = weakref.WeakSet(self.optimizers)
        self.manual: Tracked | None = None
        self.hyperparameters: list[dict[str, Any]] = []  # per optimizer, for meta.json
        self.root_calls = 0  # calls of a watched model seen so far
        self._serials = 0
        self._members: dict[int, _Membership] = {}  # by serial
        self.retired_layers = 0  # tensors recorded by optimizers the script dropped since
        self._unowned: set[int] = set()  # id() of clipped tensors no optimizer owns
        self._sentinels: list[weakref.ref[Tensor]] = []  # see param_versions()
        self._sentinels_of = 0  # len(self.known) when they were picked

    def start(self) -> None:
        """Watch the given models; in auto mode, find the optimizers made before the start."""
        if self.auto:
            # Optimizers made before the Lens started are not announced by Optimizer.__init__:
            # find them once, so a backward is not taken for a manual update.
            if any(_is_optimizer(o) for o in gc.get_objects()):
                # Only then: drop the ones that only reference cycles keep alive (an earlier
                # run in the same notebook or test process), so they do not name this run.
                gc.collect()
                self.known.update(o for o in gc.get_objects() if _is_optimizer(o))
            if self.known:
                self.watch_owners(list(self.known))
            else:  # until an optimizer appears: a script may update parameters by hand
                self.discovery.enable()
        for model in self.models:
            self.watch(model)

    def all(self) -> list[Tracked]:
        return [*self.roles.all, *([self.manual] if self.manual else [])]

    def created(self, optimizer: torch.optim.Optimizer) -> None:
        """``Optimizer.__init__`` finished (auto mode: recorded from its first step)."""
        self._unowned.clear()
        if self.auto:
            self.known.add(optimizer)
            self.roles.created(optimizer)
            self.watch_owners([optimizer])

    def param_versions(self) -> tuple[int, ...]:
        """The version counters of one trainable parameter per known optimizer: they move
        when parameters are changed in place (an optimizer step; SAM's ascent step between
        its two backward passes), not by forward or backward passes. The last one is taken:
        the first is often an embedding, which ``nn.Embedding(max_norm=…)`` renormalises in
        place during forward."""
        if len(self.known) != self._sentinels_of:
            self._sentinels_of = len(self.known)
            picked = [_last_trainable(o) for o in self.known]
            self._sentinels = [weakref.ref(p) for p in picked if p is not None]
        return tuple([p._version for p in (ref() for ref in self._sentinels) if p is not None])

    def grad_marks(self) -> tuple[tuple[int, int] | None, ...]:
        """Identity and version of the gradient of each :meth:`param_versions` sentinel (None:
        no gradient). Backward passes add to them; between passes they change only when the
        script clears or rewrites gradients (``zero_grad``, either way)."""
        marks: list[tuple[int, int] | None] = []
        for ref in self._sentinels:
            p = ref()
            if p is not None:
                g = p.grad
                marks.append(None if g is None else (id(g), g._version))
        return tuple(marks)

    def called(self) -> None:
        """A watched model was called."""
        self.root_calls += 1
        if self.discovery.enabled and self.roles.all:  # a watched owner is called after all:
            self.discovery.disable()  # off before this (maybe compiled) forward runs

    def tracked_for(self, optimizer: torch.optim.Optimizer) -> Tracked | None:
        """The capture of ``optimizer``, set up at its first step (None: not recorded)."""
        tracked = self.roles.by_optimizer.get(optimizer)
        if tracked is not None:
            return tracked
        if not self.auto and all(optimizer is not o for o in self.optimizers):
            return None  # explicit mode: only the optimizers the Lens was given
        params, membership = _Membership.of(optimizer)
        if not params:
            return None
        self.settle_discovery()
        if self.auto and not self.root_calls:
            # What the script calls is not the owner watched so far: torch.compile(model) or
            # DDP(model) wrapped it after the optimizer was made (look again), or the script
            # calls an inner module (a LightningModule's model): the next step's forward
            # finds it (the global hook is then on for one step only).
            self.watch_owners([optimizer])
            self.discovery.enable()
        self._retire_gone()
        self._serials += 1
        names = self._names(params, optimizer)
        recorder, decoder = self.make(params, names, self._serials, 0)
        tracked = Tracked(recorder, decoder, self._serials, ids=frozenset(map(id, params)))
        self._members[self._serials] = membership
        self.roles.add(optimizer, tracked)
        self.hyperparameters.append(hyperparameters(optimizer, self._serials))
        self.known.add(optimizer)
        return tracked

    def _retire_gone(self) -> None:
        """Before a new optimizer is recorded: the captures of optimizers the script dropped
        (a sweep or k-fold loop making a new model and optimizer each time) are flushed and
        let go, so the old models' tensors can be freed (they were kept to the end: memory
        grew by a model per fold). Optimizers often sit in reference cycles: collect first."""
        if not self.roles.all:
            return
        gc.collect()
        for tracked in self.roles.gone():
            tracked.recorder.flush()
            self.retired_layers += tracked.recorder.layout.n
            self._members.pop(tracked.serial, None)
            self.roles.retire(tracked)

    def follow(self, optimizer: torch.optim.Optimizer, tracked: Tracked) -> None:
        """At each captured step of a tracked optimizer: parameters that joined its steps since
        its recorder was made are recorded from this step on (by a new recorder, the rows so
        far handed over)."""
        membership = self._members.get(tracked.serial)
        if membership is None or membership.same(optimizer):
            return
        params, self._members[tracked.serial] = _Membership.of(optimizer)
        old = tracked.recorder.params
        if not params or (len(params) == len(old) and all(p is q for p, q in zip(params, old))):
            return
        tracked.recorder.flush()
        self._unowned.clear()
        names = self._names(params, optimizer)
        tracked.recorder, tracked.decoder = self.make(params, names, tracked.serial, 0)
        tracked.ids = frozenset(map(id, params))
        self.hyperparameters = [
            hyperparameters(optimizer, h["serial"]) if h["serial"] == tracked.serial else h
            for h in self.hyperparameters
        ]

    def track_manual(self) -> Tracked | None:
        """The manual-update set (every trainable parameter of the models seen in forward)."""
        if self.manual is not None:
            return self.manual
        roots = self.settle_discovery()
        params: list[Tensor] = []
        seen: set[int] = set()
        for root in roots:
            for p in root.parameters():
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
        if not params:
            return None
        names = self.namer.names(params, owning_roots(params))
        recorder, decoder = self.make(params, names, 0, 1)
        self.manual = Tracked(recorder, decoder, 0, primary=True)
        return self.manual

    def owner_of(self, params: list[Tensor]) -> Tracked | None:
        """The recorded optimizer whose parameters are being clipped (tracked from now on),
        known by the first trainable one: ``clip_grad_norm_(model.parameters())`` of a model
        whose first layers are frozen starts with parameters no optimizer holds."""
        first = next((p for p in params if p.requires_grad), None)
        if first is None:
            return None
        tracked = self.roles.owner_of(first)
        if tracked is not None:
            optimizer = next((o for o, t in self.roles.by_optimizer.items() if t is tracked), None)
        elif id(first) in self._unowned:
            return None
        else:
            holders = [o for o in list(self.known) if _holds(o, first)]
            optimizer = self.roles.latest(holders)
            if optimizer is None:
                self._unowned.add(id(first))  # no scan per step (cleared by a new optimizer)
                return None
            tracked = self.tracked_for(optimizer)
        if tracked is not None and optimizer is not None:
            self.follow(optimizer, tracked)  # parameters that joined since its last step clip too
        return tracked

    def settle_discovery(self) -> list[nn.Module]:
        """The root modules seen in forward so far (watched from now on)."""
        if self.discovery.enabled:
            self.discovery.disable()
        roots = self.models or self.discovery.roots()
        for root in roots:
            self.watch(root)
        return roots

    def watch_owners(self, optimizers: list[torch.optim.Optimizer]) -> None:
        """Watch the modules that own the optimizers' parameters, found without a global
        module hook: one left on during a compiled forward makes torch.compile recompile
        once it is removed."""
        if self.discovery.enabled:
            self.discovery.disable()
        params = [p for o in optimizers for g in o.param_groups for p in g["params"]]
        for root in owning_roots(params):
            self.watch(root)

    def _names(self, params: list[Tensor], optimizer: torch.optim.Optimizer) -> list[str]:
        """Names from the modules that own ``params``; the first time, the roots of every
        optimizer alive are named together (GAN: ``Generator.…`` and ``Discriminator.…``)."""
        scope = list(params)
        if self._serials == 1:
            for other in list(self.known):
                scope += [p for g in other.param_groups for p in g["params"] if p.requires_grad]
        if self.auto:
            roots = owning_roots(scope)
        else:
            covered = {id(q) for r in self.models for q in r.parameters()}
            extra = any(id(p) not in covered for p in params)
            roots = [*self.models, *(owning_roots(params) if extra else [])]
        given: dict[int, str] = {}  # the optimizer's own param_names, else a unique fallback
        for g, group in enumerate(optimizer.param_groups):
            names = group.get("param_names") or []
            for i, p in enumerate(group["params"]):
                given[id(p)] = names[i] if i < len(names) else f"opt{self._serials}.group{g}.{i}"
        recorded = {id(p) for t in self.roles.by_optimizer.values() for p in t.recorder.params}
        return self.namer.names(params, roots, given, recorded)


def _holds(optimizer: torch.optim.Optimizer, param: Tensor) -> bool:
    return any(p is param for g in optimizer.param_groups for p in g["params"])


def _is_optimizer(obj: Any) -> bool:
    """A real optimizer (by its type: no proxy's ``__class__`` runs), not a wrapper that
    forwards to one (Lightning's ``LightningOptimizer``, accelerate's ``AcceleratedOptimizer``:
    ``Optimizer`` subclasses that never ran ``Optimizer.__init__``)."""
    if not issubclass(type(obj), torch.optim.Optimizer):
        return False
    try:
        own = object.__getattribute__(obj, "__dict__")
    except AttributeError:  # __slots__: nothing to forward to
        return True
    return "_optimizer_step_pre_hooks" in own


def _last_trainable(optimizer: torch.optim.Optimizer) -> Tensor | None:
    for group in reversed(optimizer.param_groups):
        for p in reversed(group["params"]):
            if isinstance(p, Tensor) and p.requires_grad:
                return p
    return None
