"""Running scheduled probes: on the recorded probe set, isolated from training, timed, their
rows checked against the schema, and switched off (one line, an ``internal_error`` event) when
one fails or returns rows the writer could not store. A probe that cannot measure this run
(:class:`~gradlens.probes.base.ProbeUnavailable`, or one that needs the training loss when the
recorded loss call is only a part of it) is said once, listed as unavailable and not run again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn

from gradlens.analysis.objective import Batch, Objective, batches_from_probe_set
from gradlens.capture.facts import learning_rate
from gradlens.instrument.distributed import unwrap_data_parallel
from gradlens.instrument.guard import Guard
from gradlens.instrument.probe_set import ProbeSet
from gradlens.probes.base import Probe, ProbeContext, ProbeUnavailable, Rows
from gradlens.store.rows import check_rows, long_rows

__all__ = ["ProbeRunner", "check_probe_rows"]

_NO_BATCH = (
    "training batch whose loss gradlens saw (an F.* loss, also inside forward, or a loss "
    "returned by forward)"
)

Write = Callable[[str, dict[str, Any]], None]
UpdateFn = Callable[[], dict[str, Tensor] | None]
Trained = Callable[[], list[Tensor]]  # the parameters the script's optimizers step
# The primary optimizer's parameters and their Δθ at the last step (None: not known)
LastUpdate = Callable[[], tuple[list[Tensor], list[Tensor]] | None]


class ProbeRunner:
    """Runs probes on the batches of ``probe_set`` and hands their rows to ``write``."""

    def __init__(
        self,
        probes: list[Probe],
        probe_set: ProbeSet,
        guard: Guard,
        write: Write,
        say: Callable[[str], None],
        writes: bool = True,
        unavailable: dict[str, str] | None = None,
        trained: Trained | None = None,
    ) -> None:
        self.probes = list(probes)
        self.probe_set = probe_set
        self.guard = guard
        self.write = write
        self.say = say
        self.writes = writes  # multi-process: every rank measures, rank 0 writes
        self.unavailable = {} if unavailable is None else unavailable  # "probe NAME" → why
        self.trained = trained
        self._waited: set[str] = set()  # probes that were due but had no batch to replay
        self._ran: set[str] = set()
        # meta "probe_scope": set when the replayed module holds only part of what is trained
        self.scope: dict[str, Any] = {}

    def due(self, step: int) -> list[Probe]:
        return [p for p in self.probes if p.should_run(step)]

    def at_end(self, last: int) -> list[Probe]:
        """The ``at_end`` probes, unless the schedule just ran them at ``last``."""
        return [p for p in self.probes if p.at_end and not p.should_run(last)]

    def after_step(
        self, step: int, optimizer: Any, last_update: LastUpdate, world: int = 1
    ) -> None:
        """Run the probes scheduled after optimizer step ``step``."""
        due = self.due(step)
        if due:
            self.run(due, step, _lrs(optimizer), optimizer, _update_fn(last_update), world)

    def at_close(self, last: int, optimizer: Any, last_update: LastUpdate, world: int = 1) -> None:
        """Run the ``at_end`` probes once the run finished (``last``: its last step)."""
        final = self.at_end(last)
        if final:
            self.run(final, last, _lrs(optimizer), optimizer, _update_fn(last_update), world)

    def run(
        self,
        probes: list[Probe],
        step: int,
        lrs: list[float],
        optimizer: Any,
        update_fn: Callable[[Objective], UpdateFn | None],
        world: int = 1,
    ) -> None:
        probes = [p for p in probes if self.guard.active(f"probe {p.name}")]
        if not probes:
            return
        module, batches = self._batches()
        if module is not None and self._abandoned(module):
            self.probe_set.restart()  # a new model trains now (a sweep, k-fold): record its
            module, batches = None, []  # batches; the old one's would measure the old model
        if module is None:  # not an error: batches are recorded from the first step on
            names = ", ".join(p.name for p in probes)
            self.say(f"probes ({names}) wait for a {_NO_BATCH}")
            self._waited.update(p.name for p in probes)
            return
        partial = [b for b in self.probe_set.batches if b.whole is False]
        if partial:
            returned = any(b.loss is not None and b.loss.inside_forward for b in partial)
            what = (
                "the loss the model returns (terms added after forward)"
                if returned
                else "one loss call (several terms)"
            )
            probes = self._without_objective(probes, f"the training loss is not {what}")
        if any(b.loss is not None and not b.loss.on_output for b in self.probe_set.batches):
            why = (
                "the loss call's input is a function of the model output (a sigmoid, a gather, "
                "a slice), not the output itself"
            )
            probes = self._without_objective(probes, why)
        if any(b.loss is not None and b.loss.per_sample for b in self.probe_set.batches):
            why = "the loss call returns per-sample losses (reduction='none') the script reduces"
            probes = self._without_objective(probes, why)
        model = unwrap_data_parallel(module)
        if not self.scope:
            self._note_scope(model)
        for probe in probes:
            start = time.perf_counter()
            objective = Objective(model, batches, probe.mode)
            context = ProbeContext(step, objective, lrs, optimizer, update_fn(objective), world)
            feature = f"probe {probe.name}"
            self._ran.add(probe.name)
            rows = self.guard.call(feature, _compute, probe, objective, context)
            if isinstance(rows, ProbeUnavailable):
                self._unavailable([probe], str(rows).splitlines()[0])
                continue
            if rows is not None:  # checked here: a bad row fails this probe, not the writer
                rows = self.guard.call(feature, check_probe_rows, probe, rows)
            if rows is None or not self.writes:
                continue
            for table, columns in rows.items():
                self.write(table, columns)
            seconds = time.perf_counter() - start
            metric = f"probe_seconds.{probe.name}"
            self.write("scalars", long_rows("scalars", step, metric=metric, index=0, value=seconds))

    def finish(self) -> None:
        """At close: probes that were due but never found a batch to replay are listed as
        unavailable (the run's ``meta.json`` says why they wrote nothing)."""
        for name in sorted(self._waited - self._ran):
            self.unavailable.setdefault(f"probe {name}", f"never ran: no {_NO_BATCH} was seen")

    def _without_objective(self, probes: list[Probe], why: str) -> list[Probe]:
        """``probes`` but those measuring the training loss, which the recorded loss call is
        not (``why``): the script backpropagates more than the call (several terms, several
        backward calls), more than the loss the model returned (terms added after forward), or
        its own reduction of per-sample losses."""
        partial = [p for p in self.probes if p.needs_objective]
        if partial:
            names = "/".join(p.name for p in partial)
            why = f"{why}: {names} would measure another objective"
            self.say(f"probes: {why}")
            self._unavailable(partial, why, quiet=True)
        return [p for p in probes if not p.needs_objective]

    def _abandoned(self, module: nn.Module) -> bool:
        """The recorded batches' module holds none of the parameters trained now."""
        if self.trained is None:
            return False
        trained = {id(p) for p in self.trained()}
        return bool(trained) and not any(id(p) in trained for p in module.parameters())

    def _note_scope(self, model: nn.Module) -> None:
        """Say once (and keep for ``meta.json``) when the probes' module holds only part of the
        trained parameters: a model split over several root modules (an encoder and a decoder
        called in turn, a GAN's generator and discriminator) is replayed through the root whose
        forward fed the loss, with its inputs (the other modules' outputs) held fixed, so its
        curvature is that module's block of the Hessian."""
        if self.trained is None:
            return
        trained = {id(p): p for p in self.trained()}
        covered = {id(p) for p in model.parameters()}
        if not trained or trained.keys() <= covered:
            return
        inside = sum(p.numel() for i, p in trained.items() if i in covered)
        total = sum(p.numel() for p in trained.values())
        name = type(model).__name__
        self.scope.update(module=name, parameters=inside, trained=total)
        self.say(
            f"probes measure {name} only ({inside:,} of the {total:,} trained parameters): "
            f"the loss is replayed through {name} with its inputs held fixed"
        )

    def _unavailable(self, probes: list[Probe], why: str, quiet: bool = False) -> None:
        """Say why once, list it in ``meta.json`` and stop scheduling these probes."""
        for probe in probes:
            self.unavailable[f"probe {probe.name}"] = why
            if not quiet:
                self.say(f"probe {probe.name} unavailable: {why}")
        self.probes = [p for p in self.probes if p not in probes]

    def _batches(self) -> tuple[nn.Module | None, list[Batch]]:
        """The recorded batches of the first root module that has one with a loss (a model
        split over several root modules is replayed through the right one)."""
        recorded = [
            b for b in self.probe_set.batches if b.loss is not None and b.module is not None
        ]
        if not recorded:
            return None, []
        module = recorded[0].module
        mine = ProbeSet(self.probe_set.capacity)
        mine.batches = [b for b in recorded if b.module is module]
        return module, batches_from_probe_set(mine)


def check_probe_rows(probe: Probe, rows: Rows) -> Rows:
    """``rows`` if the writer can store them: tables among the probe's ``tables``, each table's
    columns as its schema has them (``store.rows.check_rows``); else a one-line ``ValueError``."""
    if not isinstance(rows, Mapping):
        raise ValueError(f"probe {probe.name} returned {type(rows).__name__}, not rows per table")
    for table, columns in rows.items():
        if table not in probe.tables:
            raise ValueError(
                f"probe {probe.name} wrote table {table!r}, not one of its tables "
                f"({', '.join(probe.tables) or 'none'})"
            )
        check_rows(table, columns)
    return rows


def _compute(probe: Probe, objective: Objective, context: ProbeContext) -> Rows | ProbeUnavailable:
    if probe.real_only and any(p.is_complex() for p in objective.params):
        return ProbeUnavailable("the model has complex parameters; it measures real ones only")
    with objective.isolated():
        try:
            return probe.compute(context)
        except ProbeUnavailable as exc:  # not an internal error: said, not disabled
            return exc


def _lrs(optimizer: Any) -> list[float]:
    groups = optimizer.param_groups if optimizer is not None else []
    return [float(learning_rate(g.get("lr"))) for g in groups]


def _update_fn(last_update: LastUpdate) -> Callable[[Objective], UpdateFn | None]:
    """Δθ of the last step by the objective's parameter names (primary optimizer only)."""

    def for_objective(objective: Objective) -> UpdateFn:
        def update() -> dict[str, Tensor] | None:
            known = last_update()
            if known is None:
                return None
            by_id = {id(p): d for p, d in zip(*known, strict=True)}
            out = {
                n: by_id[id(p)]
                for n, p in zip(objective.names, objective.params, strict=True)
                if id(p) in by_id
            }
            return out or None

        return update

    return for_objective
