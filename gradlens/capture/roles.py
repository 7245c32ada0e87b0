"""Which optimizer is the run's *primary*: the one whose steps are the run's steps.

With one optimizer there is nothing to decide. With several (GANs, two-phase training,
forward-forward layers trained in turn) the primary advances the run's step and writes the
plain metrics (``loss``, ``lr``…); the others write ``loss@k``… labelled with their own step
count. Rules, in order:

- the first optimizer to step is the primary;
- an optimizer that steps while the primary is gone, or that was created after the primary's
  last step (a new training phase), takes over at once;
- an optimizer that steps twice while the primary does not step takes over at its second
  step; its previous step, still buffered, is relabelled as a step of the run.

The role is decided on the training thread when the step is captured and travels with the
row (:attr:`StepInfo.primary`); nothing on the writer thread changes afterwards.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch

from gradlens.capture.decode import ChunkDecoder
from gradlens.capture.recorder import StepRecorder

__all__ = ["Roles", "Tracked"]


@dataclass
class Tracked:
    """One optimizer (or the manual-update model set) and its capture."""

    recorder: StepRecorder
    decoder: ChunkDecoder
    serial: int
    primary: bool = False
    steps: int = 0  # this optimizer's own steps
    since_primary: int = 0  # its steps since the primary's last one
    has_loss: bool = False  # the step being recorded consumed a loss
    ids: frozenset[int] = frozenset()  # id() of its parameters

    def owns(self, param: Any) -> bool:
        return id(param) in self.ids


class Roles:
    """The optimizers being recorded and which of them is the primary."""

    def __init__(self) -> None:
        self.by_optimizer: weakref.WeakKeyDictionary[torch.optim.Optimizer, Tracked] = (
            weakref.WeakKeyDictionary()
        )
        # strong: flushed when its optimizer is found gone (``retire``) or at close
        self.all: list[Tracked] = []
        self._primary: weakref.ref[torch.optim.Optimizer] | None = None
        self._created: weakref.WeakKeyDictionary[torch.optim.Optimizer, int] = (
            weakref.WeakKeyDictionary()
        )
        self._steps = 0  # optimizer steps taken, all optimizers together
        self._primary_last = 0  # value of _steps after the primary's last step
        # run steps at which another optimizer took over as primary (a new training phase:
        # fine-tuning after pre-training, the next model of a sweep or fold), for meta.json
        self.phases: list[int] = []

    @property
    def primary(self) -> torch.optim.Optimizer | None:
        return self._primary() if self._primary is not None else None

    def created(self, optimizer: torch.optim.Optimizer) -> None:
        """An optimizer was constructed now (optimizers made before recording count as 0)."""
        self._created[optimizer] = self._steps

    def add(self, optimizer: torch.optim.Optimizer, tracked: Tracked) -> None:
        self.by_optimizer[optimizer] = tracked
        self.all.append(tracked)

    def gone(self) -> list[Tracked]:
        """The recorded optimizers the script no longer holds (collected)."""
        live = {id(t) for t in self.by_optimizer.values()}
        return [t for t in self.all if id(t) not in live and t.serial]

    def retire(self, tracked: Tracked) -> None:
        """Forget a collected optimizer's capture (its rows were flushed)."""
        self.all = [t for t in self.all if t is not tracked]

    def latest(self, optimizers: list[torch.optim.Optimizer]) -> torch.optim.Optimizer | None:
        """Of a wrapper and its base optimizer over the same parameters, the one likely to step:
        the one created last — SAM's base (made inside SAM's constructor) in its two-step
        form, Lookahead (made around its base) — and, among optimizers made before recording
        started (their order is not known), a stock ``torch.optim`` one. Deterministic, where
        a set's order was not."""
        order = {id(o): i for i, o in enumerate(self._created.keys())}

        def rank(o: torch.optim.Optimizer) -> tuple[int, bool]:
            return order.get(id(o), -1), type(o).__module__.startswith("torch.optim")

        return max(optimizers, key=rank, default=None)

    def owner_of(self, param: Any) -> Tracked | None:
        return next((t for t in self.by_optimizer.values() if t.owns(param)), None)

    def decide(self, optimizer: torch.optim.Optimizer, tracked: Tracked, run_step: int) -> int:
        """Called when ``optimizer``'s step is captured; returns the run's new step count
        (advanced by the relabelled rows when it takes over)."""
        if tracked.primary:
            return run_step
        primary = self.primary
        new_phase = self._created.get(optimizer, 0) >= self._primary_last > 0
        if primary is None or tracked.since_primary >= 1 or new_phase:
            return self._take_over(optimizer, tracked, run_step)
        return run_step

    def stepped(self, tracked: Tracked) -> None:
        """After an optimizer step was recorded."""
        tracked.steps += 1
        self._steps += 1
        if tracked.primary:
            self._primary_last = self._steps
            # ``all`` rather than ``by_optimizer``: a plain list (iterating a weak dictionary
            # costs microseconds per step); a collected optimizer's count is never read again
            for other in self.all:
                other.since_primary = 0
        else:
            tracked.since_primary += 1

    def _take_over(self, optimizer: torch.optim.Optimizer, tracked: Tracked, run_step: int) -> int:
        old = self.primary
        if self._primary is not None:  # not the run's first primary: a phase starts here
            self.phases.append(run_step)  # (at its first step, relabelled below if buffered)
        if old is not None and old in self.by_optimizer:
            self.by_optimizer[old].primary = False
        tracked.primary = True
        self._primary = weakref.ref(optimizer)
        if tracked.since_primary:  # its steps while the primary was idle belong to the run
            for info in tracked.recorder.buffered()[-tracked.since_primary :]:
                info.primary, info.step = True, run_step
                run_step += 1
        tracked.since_primary = 0
        return run_step
