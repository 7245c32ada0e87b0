"""``Lens``: records one training run into a run directory.

Two ways in, same tables:
- explicit: ``with gradlens.Lens(model, optimizer): train()``;
- automatic (what ``gradlens watch`` uses): ``Lens()`` with no model finds every model and
  optimizer the script creates through PyTorch's global hooks.

Capture happens once per optimizer step (pre-step hook: gradients are final, accumulated over
micro-batches, unscaled by GradScaler, all-reduced by DDP), or when backward completes if the
script updates parameters by hand and creates no optimizer.
"""

from __future__ import annotations

import atexit
import gc
import os
import platform
import socket
import subprocess
import sys
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)
from torch.utils.hooks import RemovableHandle

from gradlens._version import __version__
from gradlens.capture.chunk import Chunk, StepInfo
from gradlens.capture.decode import ChunkDecoder, LiveStats
from gradlens.capture.recorder import StepRecorder
from gradlens.capture.softmax import SoftmaxCapture
from gradlens.capture.spikes import SpikeConfig, SpikeDetector
from gradlens.instrument import interception
from gradlens.instrument.discovery import ModuleDiscovery, parameter_names
from gradlens.instrument.distributed import (
    dist_info,
    group_ready,
    remove_pointer,
    shared_run_dir,
    unwrap_data_parallel,
)
from gradlens.instrument.live import MODES, StatusLine
from gradlens.instrument.probe_set import ProbeSet, batch_size_of
from gradlens.objective import Batch, Objective, batches_from_probe_set
from gradlens.probes import Probe, ProbeContext, make_probes
from gradlens.store import RunWriter, create_run_dir, update_meta, write_meta
from gradlens.store.meta import process_start, valid_run_name

__all__ = ["PRESETS", "Lens", "default_runs_dir"]

PRESETS = ("cheap", "standard", "full")


def default_runs_dir() -> Path:
    """``$GRADLENS_DIR`` or ``./runs``."""
    return Path(os.environ.get("GRADLENS_DIR", "runs"))


@dataclass
class _Tracked:
    """One optimizer (or the manual-update model set) and its capture.

    The *primary* optimizer (the first to step, or one that keeps stepping while the primary
    does not) advances the run's step and writes the unsuffixed scalars; the others write
    ``metric@serial`` scalars labelled with their own step count.
    """

    recorder: StepRecorder
    decoder: ChunkDecoder
    serial: int
    primary: bool = False
    steps: int = 0  # this optimizer's own steps
    since_primary: int = 0  # its steps since the primary's last one
    has_loss: bool = False  # the step being recorded consumed a loss


class Lens:
    """Records gradients, parameters, updates, loss and spikes of a training run.

    Args:
        model: the model(s) being trained; ``None`` with ``optimizer=None`` discovers them.
        optimizer: the optimizer(s); ``None`` with a model means manual parameter updates.
        runs_dir: parent folder of the run (default ``$GRADLENS_DIR`` or ``./runs``).
        name: run name (default ``run-<time>``); ``name-2``… if taken.
        every: steps between flushes to disk (a SIGKILL loses at most this many steps).
        flush_secs: flush earlier when this many seconds passed since the last flush.
        probes: cost preset of the scheduled probes: ``cheap``, ``standard`` or ``full``.
        probe_options: per-probe options, e.g. ``{"hessian": {"k": 10, "every": 100}}``; a
            probe named here runs even when its preset is above ``probes``.
        probe_batches: training batches kept for probes to replay.
        spikes: thresholds of the online spike detectors.
        track_updates: record ‖Δθ‖ (keeps one copy of the parameters on their device).
        track_softmax: record softmax-collapse signals from every training cross-entropy
            call, and the gradient/weight cosines every ``cos_every`` steps.
        status: status line on stderr: ``off`` (default), ``auto``, ``live`` or ``plain``.

    Example:
        >>> with Lens(model, optimizer, name="baseline") as lens:   # doctest: +SKIP
        ...     for x, y in loader:
        ...         opt.zero_grad(); F.cross_entropy(model(x), y).backward(); opt.step()
        >>> gradlens.open_run(lens.run_dir).table("layers")
    """

    def __init__(
        self,
        model: nn.Module | Sequence[nn.Module] | None = None,
        optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer] | None = None,
        *,
        runs_dir: str | Path | None = None,
        name: str | None = None,
        every: int = 50,
        flush_secs: float = 10.0,
        probes: str = "cheap",
        probe_options: dict[str, dict[str, Any]] | None = None,
        probe_batches: int = 2,
        spikes: SpikeConfig | None = None,
        track_updates: bool = True,
        track_softmax: bool = True,
        cos_every: int = 10,
        status: str = "off",
        command: str | None = None,
        argv: Sequence[str] | None = None,
    ) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        if flush_secs <= 0:
            raise ValueError(f"flush_secs must be > 0, got {flush_secs}")
        if status not in MODES:
            raise ValueError(f"status must be one of {', '.join(MODES)}, got {status!r}")
        if cos_every < 0:
            raise ValueError(f"cos_every must be >= 0, got {cos_every}")
        if probes not in PRESETS:
            raise ValueError(f"probes must be one of {', '.join(PRESETS)}, got {probes!r}")
        self.models = _as_list(model, nn.Module, "model")
        self.optimizers = _as_list(optimizer, torch.optim.Optimizer, "optimizer")
        self.auto = not self.models and not self.optimizers
        # Absolute once, here: a script may os.chdir() (Hydra, "cd to the script's folder").
        self.runs_dir = Path(
            runs_dir if runs_dir is not None else default_runs_dir()
        ).absolute()
        self.name = valid_run_name(name) if name else time.strftime("run-%Y%m%d-%H%M%S")
        self.every, self.flush_secs, self.probes = every, flush_secs, probes
        self.spike_config = spikes or SpikeConfig()
        self.track_updates = track_updates
        self.track_softmax = track_softmax
        self.cos_every = cos_every
        self._softmax: SoftmaxCapture | None = None
        self.command = command or " ".join(sys.argv)
        self.argv = list(argv) if argv is not None else list(sys.argv)
        self.dist = dist_info()
        self.probe_set = ProbeSet(probe_batches)
        self.scheduled = make_probes(probes, probe_options)
        self._probe_failures: set[str] = set()
        self._said: set[str] = set()
        self.step = 0
        self.run_dir: Path | None = None
        self._status_mode = status
        self._status: StatusLine | None = None
        self._writer: RunWriter | None = None
        self._discovery = ModuleDiscovery()
        self._tracked: weakref.WeakKeyDictionary[torch.optim.Optimizer, _Tracked] = (
            weakref.WeakKeyDictionary()
        )
        self._trackers: list[
            _Tracked
        ] = []  # strong: flushed at close even if the optimizer is gone
        self._primary: weakref.ref[torch.optim.Optimizer] | None = None
        self._serials = 0
        self._manual: _Tracked | None = None
        self._known_optimizers: weakref.WeakSet[torch.optim.Optimizer] = weakref.WeakSet()
        self._hooked_roots: weakref.WeakSet[nn.Module] = weakref.WeakSet()
        self._handles: list[RemovableHandle] = []
        self._loss: Tensor | None = None
        self._scaled: tuple[Tensor, Tensor] | None = None  # (scaled, unscaled)
        self._scaler_step: list[Any] | None = None  # [scaler, optimizer, pre-hook fired]
        self._in_root_forward = 0
        self._samples = self._tokens = 0
        self._t0 = self._last_end = 0.0
        self._wall0 = 0.0
        self._device: str | None = None
        self._closed = False
        self._started = False

    # -- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> Lens:
        self.start()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close("finished")
        elif issubclass(exc_type, SystemExit):
            code = exc.code if exc is not None else None
            clean = code is None or code == 0
            self.close(
                "finished" if clean else "failed", error=None if clean else f"SystemExit({code!r})"
            )
        elif issubclass(exc_type, KeyboardInterrupt):
            self.close("interrupted", error="KeyboardInterrupt")
        else:
            self.close("failed", error=f"{exc_type.__name__}: {exc}")

    def start(self) -> Lens:
        """Create the run directory and start recording."""
        if self._started:
            raise RuntimeError("this Lens was already started")
        self._started = True
        if self.dist.active:  # one run folder for all ranks, made by rank 0
            self.run_dir = shared_run_dir(self.runs_dir, self.name, self.dist)
        else:
            self.run_dir = create_run_dir(self.runs_dir, self.name)
        self.name = self.run_dir.name
        self._t0 = self._last_end = time.perf_counter()
        self._wall0 = time.time()
        if self.dist.main:
            write_meta(self.run_dir, self._initial_meta())
        self._writer = RunWriter(self.run_dir, tag=self.dist.tag)
        if self.track_softmax and self.dist.main:  # rank 0's logits (each rank sees its own)
            self._softmax = SoftmaxCapture(self._writer.submit, self.every, self.cos_every)
        self._status = StatusLine(self.name, self._status_mode if self.dist.main else "off")
        self._status.start()
        interception.install(self)
        if self.auto:
            # Optimizers made before the Lens started are not announced by Optimizer.__init__:
            # find them once, so a backward is not taken for a manual update.
            self._known_optimizers.update(  # type(), not isinstance: no proxy's __class__ runs
                o for o in gc.get_objects() if issubclass(type(o), torch.optim.Optimizer)
            )
            self._discovery.enable()
            self._handles.append(register_optimizer_step_pre_hook(self._pre_step))
            self._handles.append(register_optimizer_step_post_hook(self._post_step))
        else:
            for model in self.models:
                self._hook_root(model)
            for opt in self.optimizers:
                self._known_optimizers.add(opt)
                self._handles.append(opt.register_step_pre_hook(self._pre_step))
                self._handles.append(opt.register_step_post_hook(self._post_step))
        atexit.register(self._at_exit)
        return self

    def close(
        self, status: str = "finished", exit_code: int | None = None, error: str | None = None
    ) -> None:
        """Flush everything, compact the tables and write the final status."""
        if self._closed or not self._started:
            return
        atexit.unregister(self._at_exit)
        try:
            last = self.step - 1  # at_end probes, unless the schedule just ran them there
            final = [p for p in self.scheduled if p.at_end and not p.should_run(last)]
            if final and status == "finished" and self.step > 0:
                self._run_probes(final, last, self._primary_optimizer())
        finally:
            self._teardown(status, exit_code, error)

    def _teardown(self, status: str, exit_code: int | None, error: str | None) -> None:
        """Remove every patch and hook, flush, compact and finalize — always, in this order."""
        self._closed = True
        interception.uninstall(self)
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._discovery.disable()
        if self._manual is not None:
            self._manual.recorder.final_update(self._info(False, None, self._manual))
        for tracked in self._all_tracked():
            tracked.recorder.flush()
        if self._softmax is not None:
            self._softmax.flush()
        assert self._writer is not None and self.run_dir is not None
        self._writer.close(compact=True)
        if not self.dist.main:
            return
        if self.dist.active:
            remove_pointer(self.runs_dir, self.name)
        update_meta(
            self.run_dir,
            status=status,
            end_time=time.time(),
            exit_code=exit_code,
            error=error,
            steps=self.step,
            device=self._device,
            layers=sum(t.recorder.layout.n for t in self._all_tracked()),
            world_size=self.dist.world,
        )
        if self._status is not None:
            self._status.stop(self._summary(status))

    def _at_exit(self) -> None:
        self.close("finished")

    # -- interception listener (see gradlens.instrument.interception) ---------------------------

    def on_backward(self, tensor: Tensor) -> None:
        if self._scaled is not None and tensor is self._scaled[0]:
            tensor = self._scaled[1]
        value = tensor.detach().reshape(()).float()
        self._loss = value if self._loss is None else self._loss + value

    def after_backward(self) -> None:
        if self._known_optimizers or self.optimizers:
            return
        if self._manual is None:
            self._manual = self._track_manual()
            if self._manual is None:
                return
        recorder = self._manual.recorder
        if self._softmax is not None:
            self._softmax.gradients(self.step, recorder.layout.names, recorder.params)
        loss = self._take_loss()
        self._manual.has_loss = loss is not None
        recorder.before_update(loss)
        recorder.after_update(self._info(False, None, self._manual))
        self._end_step()

    def on_loss_call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not self.probe_set.full:
            self.probe_set.record_loss(name, args, kwargs, self._in_root_forward > 0)
        logits = args[0] if args else kwargs.get("input")
        if (
            name == "cross_entropy"
            and self._softmax is not None
            and isinstance(logits, Tensor)
            and logits.requires_grad  # a training forward, not an evaluation loop
            and torch.is_grad_enabled()
        ):
            target = args[1] if len(args) > 1 else kwargs.get("target")
            self._softmax.observe(logits, target, kwargs.get("ignore_index", -100))

    def on_scale(self, unscaled: Tensor, scaled: Tensor) -> None:
        self._scaled = (scaled, unscaled)

    def before_scaler_step(self, scaler: Any, optimizer: Any) -> None:
        self._scaler_step = [scaler, optimizer, False]

    def after_scaler_step(self, scaler: Any, optimizer: Any) -> None:
        context, self._scaler_step = self._scaler_step, None
        if context is None or context[2] or not getattr(scaler, "_enabled", True):
            return
        # GradScaler found inf/NaN and skipped optimizer.step(): record the step as skipped,
        # with the (unscaled, non-finite) gradients it refused.
        self._capture(optimizer, scaler._get_scale_async())
        self._post_step(optimizer, (), {}, skipped=True)

    def on_optimizer_created(self, optimizer: torch.optim.Optimizer) -> None:
        if self.auto:
            self._known_optimizers.add(optimizer)
            self._discovery.enable()  # a new optimizer may come with a new model

    # -- optimizer hooks -------------------------------------------------------------------------

    def _pre_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if interception.is_suspended():
            return
        scale = None
        if self._scaler_step is not None and self._scaler_step[1] is optimizer:
            self._scaler_step[2] = True
            scale = self._scaler_step[0]._get_scale_async()
        self._capture(optimizer, scale)

    def _capture(self, optimizer: torch.optim.Optimizer, scale: Tensor | None) -> None:
        tracked = self._tracked_for(optimizer)
        if tracked is None:
            return
        primary = self._primary() if self._primary is not None else None
        if not tracked.primary and (primary is None or tracked.since_primary >= 1):
            self._promote(optimizer, tracked)  # the old primary is gone or idle
        if tracked.primary and self._softmax is not None:
            recorder = tracked.recorder
            self._softmax.gradients(self.step, recorder.layout.names, recorder.params)
        loss = self._take_loss()  # what was backpropagated for this optimizer's step
        tracked.has_loss = loss is not None
        tracked.recorder.before_update(
            loss,
            grad_scale=getattr(optimizer, "grad_scale", None),
            skipped=getattr(optimizer, "found_inf", None),
            amp_scale=scale,
        )

    def _take_loss(self) -> Tensor | None:
        loss, self._loss = self._loss, None
        return loss

    def _promote(self, optimizer: torch.optim.Optimizer, tracked: _Tracked) -> None:
        old = self._primary() if self._primary is not None else None
        if old is not None and old in self._tracked:
            self._set_role(self._tracked[old], primary=False)
        self._set_role(tracked, primary=True)
        self._primary = weakref.ref(optimizer)

    def _set_role(self, tracked: _Tracked, primary: bool) -> None:
        tracked.primary = primary
        tracked.decoder.suffix = "" if primary else f"@{tracked.serial}"
        tracked.decoder.on_stats = self._on_stats if primary and self.dist.main else None

    def _post_step(
        self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any, skipped: bool = False
    ) -> None:
        if interception.is_suspended():
            return
        tracked = self._tracked.get(optimizer)
        if tracked is None:
            return
        info = self._info(skipped, optimizer, tracked)
        tracked.recorder.after_update(info, applied=not skipped)
        tracked.steps += 1
        if tracked.primary:
            for other in self._tracked.values():
                other.since_primary = 0
            self._end_step(optimizer)
        else:
            tracked.since_primary += 1

    # -- root-module hooks -----------------------------------------------------------------------

    def _hook_root(self, module: nn.Module) -> None:
        if module in self._hooked_roots:
            return
        self._hooked_roots.add(module)
        self._handles.append(
            module.register_forward_pre_hook(self._root_pre_forward, with_kwargs=True)
        )
        self._handles.append(module.register_forward_hook(self._root_forward, always_call=True))

    def _root_pre_forward(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        self._in_root_forward += 1
        if module.training and torch.is_grad_enabled() and not interception.is_suspended():
            samples, tokens = batch_size_of(args, kwargs)
            self._samples += samples
            self._tokens += tokens
            if not self.probe_set.full:
                self.probe_set.record_forward(module, args, kwargs, samples)

    def _root_forward(self, module: nn.Module, args: Any, output: Any) -> None:
        self._in_root_forward = max(0, self._in_root_forward - 1)

    # -- helpers ---------------------------------------------------------------------------------

    def _tracked_for(self, optimizer: torch.optim.Optimizer) -> _Tracked | None:
        tracked = self._tracked.get(optimizer)
        if tracked is not None:
            return tracked
        if not self.auto and all(optimizer is not o for o in self.optimizers):
            return None  # explicit mode: only the optimizers the Lens was given
        params = [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]
        if not params:
            return None
        if self._discovery.enabled:
            self._discovery.disable()
        roots = self.models or self._discovery.roots()
        for root in roots:
            self._hook_root(root)
        names = _names(params, parameter_names(roots), optimizer)
        self._serials += 1
        recorder, decoder = self._recorder(params, names)
        tracked = _Tracked(recorder, decoder, self._serials)
        self._tracked[optimizer] = tracked
        self._trackers.append(tracked)
        self._known_optimizers.add(optimizer)
        if self._primary is None or self._primary() is None:
            self._promote(optimizer, tracked)
        else:
            self._set_role(tracked, primary=False)
        return tracked

    def _track_manual(self) -> _Tracked | None:
        self._discovery.disable()
        roots = self.models or self._discovery.roots()
        params, seen = [], set()
        for root in roots:
            self._hook_root(root)
            for p in root.parameters():
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
        if not params:
            return None
        names = _names(params, parameter_names(roots), None)
        recorder, decoder = self._recorder(params, names, update_lag=1)
        tracked = _Tracked(recorder, decoder, 0)
        self._set_role(tracked, primary=True)
        return tracked

    def _recorder(
        self, params: list[Tensor], names: list[str], update_lag: int = 0
    ) -> tuple[StepRecorder, ChunkDecoder]:
        if self._device is None:
            self._device = _describe_device(params[0].device)
        detector = SpikeDetector(names, self.spike_config)
        decoder = ChunkDecoder(detector, None, rank=self.dist.rank)
        world = self.dist.world if self.dist.active and group_ready() else 1
        if self.dist.active and world == 1:
            self._say_once("no process group at the first step: each rank records its own values")
        writer = self._writer
        assert writer is not None

        def sink(chunk: Chunk) -> None:
            writer.submit(lambda: decoder(chunk))

        recorder = StepRecorder(
            params,
            names,
            sink,
            every=self.every,
            flush_secs=self.flush_secs,
            update_lag=update_lag,
            track_updates=self.track_updates,
            reduce_world=world,
        )
        return recorder, decoder

    def _info(
        self,
        skipped: bool,
        optimizer: torch.optim.Optimizer | None = None,
        tracked: _Tracked | None = None,
    ) -> StepInfo:
        now = time.perf_counter()
        lrs: tuple[Any, ...] = ()
        if optimizer is not None:
            lrs = tuple(_lr(g.get("lr")) for g in optimizer.param_groups)
        primary = tracked is None or tracked.primary
        return StepInfo(
            step=self.step if primary or tracked is None else tracked.steps,
            wall_time=time.time() - self._wall0,
            step_time=now - self._last_end if self.step > 0 and primary else None,
            samples=self._samples if primary else 0,
            tokens=self._tokens if primary else 0,
            lrs=lrs,
            has_loss=tracked.has_loss if tracked is not None else False,
            skipped=skipped,
        )

    def _end_step(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        done = self.step
        self.step += 1
        if self._softmax is not None:
            self._softmax.end_step(done)
        self._scaled = None
        self._samples = self._tokens = 0
        due = [p for p in self.scheduled if p.should_run(done)]
        if due:
            self._run_probes(due, done, optimizer)
        self._last_end = time.perf_counter()

    # -- probes ----------------------------------------------------------------------------------

    def _run_probes(
        self, probes: list[Probe], step: int, optimizer: torch.optim.Optimizer | None
    ) -> None:
        module, batches = self._probe_batches()
        if module is None:  # not an error: batches are recorded from the first step on
            names = ", ".join(p.name for p in probes)
            self._say_once(
                f"probes ({names}) wait for a training batch whose loss call gradlens "
                "saw (an F.* loss, also inside forward)"
            )
            return
        model = unwrap_data_parallel(module)
        lrs = [float(_lr(g.get("lr"))) for g in optimizer.param_groups] if optimizer else []
        world = self.dist.world if self.dist.active and group_ready() else 1
        assert self._writer is not None
        for probe in probes:
            if probe.name in self._probe_failures:
                continue
            start = time.perf_counter()
            objective = Objective(model, batches, probe.mode)
            context = ProbeContext(
                step, objective, lrs, optimizer, self._update_fn(objective), world=world
            )
            try:
                with objective.isolated():
                    rows = probe.compute(context)
            except Exception as exc:
                if os.environ.get("GRADLENS_STRICT") == "1":
                    raise
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                self._probe_failed(probe.name, f"{type(exc).__name__}: {first}")
                continue
            if not self.dist.main:
                continue  # every rank measures (collectives stay aligned), rank 0 writes
            for table, columns in rows.items():
                self._writer.write(table, columns)
            self._writer.write(
                "scalars",
                {
                    "step": [step],
                    "metric": [f"probe_seconds.{probe.name}"],
                    "index": [0],
                    "value": [time.perf_counter() - start],
                },
            )

    def _probe_batches(self) -> tuple[nn.Module | None, list[Batch]]:
        """The recorded batches of the first root module that has one with a loss call (a
        model split over several root modules is replayed through the right one)."""
        recorded = [b for b in self.probe_set.batches if b.loss is not None]
        if not recorded:
            return None, []
        module = recorded[0].module
        mine = ProbeSet(self.probe_set.capacity)
        mine.batches = [b for b in recorded if b.module is module]
        return module, batches_from_probe_set(mine)

    def _update_fn(self, objective: Objective) -> Callable[[], dict[str, Tensor] | None] | None:
        """Δθ of the last step by the objective's parameter names (primary optimizer only)."""
        primary = next((t for t in self._trackers if t.primary), None)
        if primary is None:
            return None
        recorder = primary.recorder

        def update() -> dict[str, Tensor] | None:
            delta = recorder.last_update()
            if delta is None:
                return None
            by_id = {id(p): d for p, d in zip(recorder.params, delta, strict=True)}
            out = {
                n: by_id[id(p)]
                for n, p in zip(objective.names, objective.params, strict=True)
                if id(p) in by_id
            }
            return out or None

        return update

    def _say_once(self, message: str) -> None:
        if message not in self._said:
            self._said.add(message)
            print(f"gradlens: {message}", file=sys.stderr)

    def _probe_failed(self, name: str, why: str) -> None:
        if name not in self._probe_failures:
            self._probe_failures.add(name)
            if self.dist.main:  # every rank decides the same; one says so
                print(f"gradlens: probe {name} disabled: {why}", file=sys.stderr)

    def _primary_optimizer(self) -> torch.optim.Optimizer | None:
        return self._primary() if self._primary is not None else None

    def _all_tracked(self) -> list[_Tracked]:
        return [*self._trackers, *([self._manual] if self._manual else [])]

    def _on_stats(self, stats: LiveStats) -> None:
        self._last_stats = stats
        if self._status is not None:
            self._status.update(stats)

    def _summary(self, status: str) -> str:
        stats = getattr(self, "_last_stats", LiveStats())
        return (
            f"gradlens: run {self.name!r} {status} after {self.step} steps "
            f"({stats.spikes} spikes, {stats.nonfinite} non-finite) → {self.run_dir}"
        )

    def _initial_meta(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "command": self.command,
            "argv": self.argv,
            "cwd": os.getcwd(),
            "status": "running",
            "start_time": self._wall0,
            "end_time": None,
            "pid": os.getpid(),
            "pid_start": process_start(os.getpid()),
            "host": socket.gethostname(),
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "gradlens": __version__,
            },
            "git_sha": _git_sha(),
            "config": {
                "every": self.every,
                "flush_secs": self.flush_secs,
                "probes": self.probes,
                "probe_schedule": {
                    p.name: {"every": p.every, "at_end": p.at_end, "mode": p.mode}
                    for p in self.scheduled
                },
                "probe_batches": self.probe_set.capacity,
                "track_updates": self.track_updates,
                "track_softmax": self.track_softmax,
                "cos_every": self.cos_every,
                "spikes": vars(self.spike_config),
                "mode": "auto" if self.auto else "explicit",
            },
        }


def _as_list(value: Any, kind: type, what: str) -> list[Any]:
    if value is None:
        return []
    items = [value] if isinstance(value, kind) else list(value)
    for item in items:
        if not isinstance(item, kind):
            raise TypeError(f"{what} must be a {kind.__name__} or a sequence of them")
    return items


def _names(
    params: list[Tensor], known: dict[int, str], optimizer: torch.optim.Optimizer | None
) -> list[str]:
    """Clean module names where known, the optimizer's ``param_names``, else group.index."""
    names = []
    groups = optimizer.param_groups if optimizer is not None else []
    by_id: dict[int, str] = {}
    for g, group in enumerate(groups):
        given = group.get("param_names") or []
        for i, p in enumerate(group["params"]):
            by_id[id(p)] = given[i] if i < len(given) else f"group{g}.param{i}"
    for i, p in enumerate(params):
        names.append(known.get(id(p)) or by_id.get(id(p)) or f"param{i}")
    return names


def _lr(value: Any) -> float | Tensor:
    """The learning rate now: a CUDA tensor is copied asynchronously (read on the writer
    thread); a CPU tensor is read at once (schedulers update tensor lrs in place)."""
    if isinstance(value, Tensor):
        if value.device.type == "cpu":
            return float(value)
        return value.detach().to("cpu", non_blocking=True)
    return float(value) if value is not None else float("nan")


def _describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def _git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=2, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None
