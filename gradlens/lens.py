"""``Lens``: records one training run into a run directory.

Two ways in, same tables:
- explicit: ``with gradlens.Lens(model, optimizer): train()``;
- automatic (what ``gradlens watch`` uses): ``Lens()`` with no model finds every model and
  optimizer the script creates through PyTorch's global hooks.

Capture happens once per optimizer step: at the optimizer's pre-step hook (gradients are final:
accumulated over micro-batches, unscaled by GradScaler, all-reduced by DDP), or — for a step
given a closure (LBFGS, Lightning) — right after the closure produced this step's gradients;
or when backward completes if the script updates parameters by hand and creates no optimizer.
``grad_norm`` is the gradient the model produced: a ``clip_grad_norm_``/``clip_grad_value_``
call is seen, the norms are taken before it and the clipped norm is recorded beside them.

Nothing is attached to the user's model or optimizer (hooks are global or on the class, see
``instrument.roots``), nothing runs inside ``torch.compile`` tracing, and every feature runs
behind a :class:`~gradlens.instrument.guard.Guard`: an internal error switches that feature
off with one line and training goes on.
"""

from __future__ import annotations

import atexit
import gc
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)
from torch.utils.hooks import RemovableHandle

from gradlens import user_log
from gradlens._version import __version__
from gradlens.analysis.objective import Objective
from gradlens.capture.chunk import Chunk, StepInfo
from gradlens.capture.decode import ChunkDecoder, LiveStats
from gradlens.capture.recorder import StepRecorder
from gradlens.capture.roles import Roles, Tracked
from gradlens.capture.signals import Guarded
from gradlens.capture.softmax import SoftmaxSignal
from gradlens.capture.spikes import SpikeConfig, SpikeDetector
from gradlens.capture.user import UserMetrics
from gradlens.errors import ConfigError
from gradlens.instrument import interception
from gradlens.instrument.discovery import ModuleDiscovery, ParameterNamer, owning_roots
from gradlens.instrument.distributed import (
    dist_info,
    group_ready,
    remove_pointer,
    shared_run_dir,
)
from gradlens.instrument.guard import Guard
from gradlens.instrument.live import MODES, StatusLine
from gradlens.instrument.probe_set import ProbeSet, batch_size_of
from gradlens.instrument.roots import RootCalls
from gradlens.instrument.signals import HeldSignals, exit_code_for
from gradlens.probes import make_probes
from gradlens.probes.runner import ProbeRunner
from gradlens.store import RunWriter, create_run_dir, update_meta, write_meta
from gradlens.store.meta import process_start, valid_run_name

__all__ = ["PRESETS", "Lens", "default_runs_dir"]

PRESETS = ("cheap", "standard", "full")

# Feature names (what the guard switches off, what meta.json lists under "disabled").
CAPTURE, SOFTMAX, ROOTS, CLIP = "capture", "softmax signals", "model calls", "clip capture"
USER = "user metrics"


def default_runs_dir() -> Path:
    """``$GRADLENS_DIR`` or ``./runs``."""
    return Path(os.environ.get("GRADLENS_DIR", "runs"))


def _compiling() -> bool:
    return bool(torch.compiler.is_compiling())


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
        track_softmax: record softmax-collapse signals from the training cross-entropy
            calls of every ``softmax_every``-th step, and the gradient/weight cosines every
            ``cos_every`` steps.
        param_every: parameter and update norms (‖θ‖, ‖Δθ‖) every this many steps, and at
            steps where a probe runs; gradient norms, loss and non-finite flags every step.
        status: status line on stderr: ``off`` (default), ``auto``, ``live`` or ``plain``.

    Example:
        >>> with Lens(model, optimizer, name="baseline") as lens:   # doctest: +SKIP
        ...     for x, y in loader:
        ...         opt.zero_grad(); F.cross_entropy(model(x), y).backward(); opt.step()
        >>> gradlens.open_run(lens.run_dir).table("layers")
    """

    MAX_EVERY = 1_000_000

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
        cos_every: int = 20,
        softmax_every: int = 20,
        param_every: int = 10,
        status: str = "off",
        command: str | None = None,
        argv: Sequence[str] | None = None,
    ) -> None:
        if not 1 <= every <= self.MAX_EVERY:
            raise ValueError(f"every must be between 1 and {self.MAX_EVERY}, got {every}")
        if not flush_secs > 0:
            raise ValueError(f"flush_secs must be > 0, got {flush_secs}")
        if status not in MODES:
            raise ValueError(f"status must be one of {', '.join(MODES)}, got {status!r}")
        if cos_every < 0:
            raise ValueError(f"cos_every must be >= 0, got {cos_every}")
        for option, value in (("softmax_every", softmax_every), ("param_every", param_every)):
            if value < 1:
                raise ValueError(f"{option} must be >= 1, got {value}")
        if probes not in PRESETS:
            raise ValueError(f"probes must be one of {', '.join(PRESETS)}, got {probes!r}")
        self.models = _as_list(model, nn.Module, "model")
        self.optimizers = _as_list(optimizer, torch.optim.Optimizer, "optimizer")
        self.auto = not self.models and not self.optimizers
        # Absolute once, here: a script may os.chdir() (Hydra, "cd to the script's folder").
        self.runs_dir = Path(runs_dir if runs_dir is not None else default_runs_dir()).absolute()
        self.name = valid_run_name(name) if name else time.strftime("run-%Y%m%d-%H%M%S")
        self.every, self.flush_secs, self.probes = every, flush_secs, probes
        self.spike_config = spikes or SpikeConfig()
        self.track_updates = track_updates
        self.track_softmax = track_softmax
        self.cos_every = cos_every
        self.softmax_every, self.param_every = softmax_every, param_every
        self.command = command or " ".join(sys.argv)
        self.argv = list(argv) if argv is not None else list(sys.argv)
        self.dist = dist_info()
        self.probe_set = ProbeSet(probe_batches)
        self.scheduled = make_probes(probes, probe_options)
        self.step = 0
        self.run_dir: Path | None = None
        self.unavailable: dict[str, str] = {}  # signal → why it cannot be recorded here
        self._guard = Guard(self._on_disabled)
        self._guard.quiet = not self.dist.main
        self._said: set[str] = set()
        self._softmax: SoftmaxSignal | None = None
        self._user: UserMetrics | None = None
        self._probes: ProbeRunner | None = None
        self._status_mode = status
        self._status: StatusLine | None = None
        self._last_stats = LiveStats()
        self._writer: RunWriter | None = None
        self._discovery = ModuleDiscovery()
        self._namer = ParameterNamer()
        self._roots = RootCalls(self._root_before, self._root_after)
        self._roles = Roles()
        self._serials = 0
        self._hyperparameters: list[dict[str, Any]] = []  # per optimizer, for meta.json
        self._batch_size: int | None = None
        self._manual: Tracked | None = None
        self._known_optimizers: weakref.WeakSet[torch.optim.Optimizer] = weakref.WeakSet()
        self._handles: list[RemovableHandle] = []
        self._loss: Tensor | None = None
        self._scaled: tuple[Tensor, Tensor] | None = None  # (scaled, unscaled)
        self._scaler_step: list[Any] | None = None  # [scaler, optimizer, pre-hook fired]
        self._closure_done = False  # this step's closure ran; later calls are line search
        self._root_depth = 0
        self._root_calls = 0
        self._unowned: set[int] = set()  # id() of clipped tensors no optimizer owns
        self._root_loss_seen = False
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
            try:
                write_meta(self.run_dir, self._initial_meta())
            except OSError as exc:  # read-only or full disk: nothing recorded yet, say so
                raise ConfigError(f"cannot write {self.run_dir / 'meta.json'}: {exc}") from exc
        self._writer = RunWriter(self.run_dir, tag=self.dist.tag)
        if self.track_softmax and self.dist.main:  # rank 0's logits (each rank sees its own)
            self._softmax = SoftmaxSignal(self.cos_every)
        self._probes = ProbeRunner(
            self.scheduled,
            self.probe_set,
            self._guard,
            self._writer.write,
            self._say_once,
            writes=self.dist.main,
        )
        if self.dist.main:
            self._user = UserMetrics(self._writer.submit, self._say_once)
            user_log.attach(self._log_user)
        self._status = StatusLine(self.name, self._status_mode if self.dist.main else "off")
        self._status.start()
        interception.install(self)
        if self.auto:
            # Optimizers made before the Lens started are not announced by Optimizer.__init__:
            # find them once, so a backward is not taken for a manual update.
            self._known_optimizers.update(  # type(), not isinstance: no proxy's __class__ runs
                o for o in gc.get_objects() if issubclass(type(o), torch.optim.Optimizer)
            )
            if self._known_optimizers:
                self._watch_owners(list(self._known_optimizers))
            else:  # until an optimizer appears: a script may update parameters by hand
                self._discovery.enable()
        for model in self.models:
            self._roots.add(model)
        self._known_optimizers.update(self.optimizers)
        # Global hooks (filtered to the given optimizers in explicit mode): nothing on the
        # optimizer object that pickle, deepcopy or state_dict could see.
        self._handles.append(register_optimizer_step_pre_hook(self._pre_step))
        self._handles.append(register_optimizer_step_post_hook(self._post_step))
        atexit.register(self._at_exit)
        return self

    def close(
        self, status: str = "finished", exit_code: int | None = None, error: str | None = None
    ) -> None:
        """Flush everything, compact the tables and write the final status."""
        if self._closed or not self._started:
            return
        atexit.unregister(self._at_exit)
        try:  # final probes stay interruptible; the teardown is atomic w.r.t. signals
            if status == "finished" and self.step > 0 and self._probes is not None:
                final = self._probes.at_end(self.step - 1)
                if final:
                    self._run_probes(final, self.step - 1, self._roles.primary)
        finally:
            with HeldSignals() as held:  # inside watch the outer hold is the one that holds
                self._teardown(status, exit_code, error)
                if held.first is not None and status == "finished" and self.dist.main:
                    assert self.run_dir is not None
                    name = signal.Signals(held.first).name
                    update_meta(
                        self.run_dir,
                        status="interrupted",
                        exit_code=exit_code_for(held.first),
                        error=f"{name} while gradlens closed the run",
                    )

    def _teardown(self, status: str, exit_code: int | None, error: str | None) -> None:
        """Remove every patch and hook, flush, compact and finalize — always, in this order."""
        self._closed = True
        interception.uninstall(self)
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._roots.close()
        self._discovery.disable()
        if self._manual is not None:
            manual = self._manual
            self._guard.call(CAPTURE, lambda: manual.recorder.final_update(self._info(manual)))
        for tracked in self._all_tracked():
            self._guard.call(CAPTURE, tracked.recorder.flush)
        user_log.detach(self._log_user)
        if self._user is not None:
            self._guard.call(USER, self._user.flush)
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
            disabled=dict(self._guard.disabled),
            unavailable=dict(self.unavailable),
            optimizers=self._hyperparameters,
            hyperparameters={
                **(self._hyperparameters[0] if self._hyperparameters else {}),
                "batch_size": self._batch_size,
            },
        )
        if self._status is not None:
            self._status.stop(self._summary(status))

    def _at_exit(self) -> None:
        self.close("finished")

    # -- interception listener (see gradlens.instrument.interception) ---------------------------

    def on_backward(self, tensor: Tensor) -> None:
        if self._closure_done or not self._guard.active(CAPTURE):
            return  # a closure's later calls (line search) are not this step's loss
        if self._scaled is not None and tensor is self._scaled[0]:
            tensor = self._scaled[1]
        value = tensor.detach()  # (float32 and shape (1,) when the row is written)
        self._loss = value if self._loss is None else self._loss.float() + value.float()

    def after_backward(self) -> None:
        if self._known_optimizers or self.optimizers:
            return
        self._guard.call(CAPTURE, self._capture_manual)

    def on_loss_call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self._closure_done:
            return
        self._root_loss_seen = True
        if not self.probe_set.full:
            self._guard.call(
                "probe batches",
                self.probe_set.record_loss,
                name,
                args,
                kwargs,
                self._root_depth > 0,
            )
        logits = args[0] if args else kwargs.get("input")
        if (
            name == "cross_entropy"
            and self._softmax is not None
            and self.step % self.softmax_every == 0
            and isinstance(logits, Tensor)
            and logits.requires_grad  # a training forward, not an evaluation loop
            and torch.is_grad_enabled()
        ):
            target = args[1] if len(args) > 1 else kwargs.get("target")
            ignore = kwargs.get("ignore_index", -100)
            self._guard.call(SOFTMAX, self._softmax.observe, logits, target, ignore)

    def on_scale(self, unscaled: Tensor, scaled: Tensor) -> None:
        self._scaled = (scaled, unscaled)

    def before_scaler_step(self, scaler: Any, optimizer: Any) -> None:
        self._scaler_step = [scaler, optimizer, False]

    def after_scaler_step(self, scaler: Any, optimizer: Any) -> None:
        context, self._scaler_step = self._scaler_step, None
        if context is None or context[2] or not _scaler_enabled(scaler):
            return
        # GradScaler found inf/NaN and skipped optimizer.step(): record the step as skipped,
        # with the (unscaled, non-finite) gradients it refused.
        self._guard.call(CAPTURE, self._capture, optimizer, scaler._get_scale_async())
        self._post_step(optimizer, (), {}, skipped=True)

    def on_optimizer_created(self, optimizer: torch.optim.Optimizer) -> None:
        self._unowned.clear()
        if self.auto:
            self._known_optimizers.add(optimizer)
            self._roles.created(optimizer)
            self._guard.call(ROOTS, self._watch_owners, [optimizer])

    def before_clip(self, params: list[Tensor]) -> None:
        tracked = self._guard.call(CLIP, self._owner_of, params)
        if tracked is not None:
            self._guard.call(CLIP, tracked.recorder.before_clip)

    def after_clip(self, params: list[Tensor], total: Tensor | None, max_norm: Any) -> None:
        tracked = self._guard.call(CLIP, self._owner_of, params)
        if tracked is None:
            return
        recorder = tracked.recorder
        exact = len(params) == len(recorder.params) and params[0] is recorder.params[0]
        if exact and isinstance(total, Tensor) and isinstance(max_norm, int | float):
            self._guard.call(CLIP, recorder.after_clip, total, float(max_norm))

    # -- optimizer hooks (global: nothing is stored on the optimizer) ---------------------------

    def _pre_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> Any:
        if interception.is_suspended() or _compiling() or not self._guard.active(CAPTURE):
            return None
        self._closure_done = False  # a step that raised after its closure left it set
        # args = (optimizer, *step's arguments): torch passes ``self`` along
        closure = kwargs.get("closure") if "closure" in kwargs else (args[1:2] or [None])[0]
        if callable(closure):  # capture once the closure has produced this step's gradients
            wrapped = self._after_closure(optimizer, closure)
            if "closure" in kwargs:
                return args, {**kwargs, "closure": wrapped}
            return (args[0], wrapped, *args[2:]), kwargs
        scale = None
        if self._scaler_step is not None and self._scaler_step[1] is optimizer:
            self._scaler_step[2] = True
            scaler = self._scaler_step[0]
            scale = scaler._get_scale_async() if _scaler_enabled(scaler) else None
        self._guard.call(CAPTURE, self._capture, optimizer, scale)
        return None

    def _after_closure(
        self, optimizer: torch.optim.Optimizer, closure: Callable[..., Any]
    ) -> Callable[..., Any]:
        def closure_then_capture(*args: Any, **kwargs: Any) -> Any:
            result = closure(*args, **kwargs)
            if not self._closure_done:
                self._guard.call(CAPTURE, self._capture, optimizer, None)
                self._closure_done = True
            return result

        return closure_then_capture

    def _capture(self, optimizer: torch.optim.Optimizer, scale: Tensor | None) -> None:
        if self._discovery.enabled and self._roles.all:  # a step after the first
            self._settle_discovery()  # (off before any forward if the new owner was called)
        tracked = self._tracked_for(optimizer)
        if tracked is None:
            return
        self.step = self._roles.decide(optimizer, tracked, self.step)
        loss = self._take_loss()  # what was backpropagated for this optimizer's step
        tracked.has_loss = loss is not None
        tracked.recorder.before_update(
            loss,
            grad_scale=getattr(optimizer, "grad_scale", None),
            skipped=getattr(optimizer, "found_inf", None),
            amp_scale=scale,
            sample=self._sampled(tracked),
            step=self.step,
            primary=tracked.primary,
        )

    def _post_step(
        self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any, skipped: bool = False
    ) -> None:
        if interception.is_suspended() or _compiling():
            return
        self._closure_done = False
        tracked = self._roles.by_optimizer.get(optimizer)
        if tracked is None or not self._guard.active(CAPTURE):
            return
        info = self._info(tracked, skipped, optimizer)
        self._guard.call(CAPTURE, tracked.recorder.after_update, info, not skipped)
        self._roles.stepped(tracked)
        if tracked.primary:
            self._end_step(optimizer)

    def _capture_manual(self) -> None:
        if self._manual is None:
            self._manual = self._track_manual()
            if self._manual is None:
                return
        recorder = self._manual.recorder
        loss = self._take_loss()
        self._manual.has_loss = loss is not None
        recorder.before_update(loss, step=self.step)
        recorder.after_update(self._info(self._manual))
        self._end_step()

    def _log_user(self, values: Any, step: int | None) -> None:
        """``gradlens.log``: at the last optimizer step (or ``step``)."""
        if self._user is not None:
            at = max(self.step - 1, 0) if step is None else step
            self._guard.call(USER, self._user.add, values, at)

    def _sampled(self, tracked: Tracked) -> bool:
        """Whether this step also reads parameter and update norms (probes need Δθ)."""
        if not tracked.primary:
            return tracked.steps % self.param_every == 0
        due = self._probes is not None and bool(self._probes.due(self.step))
        return due or self.step % self.param_every == 0

    def _take_loss(self) -> Tensor | None:
        loss, self._loss = self._loss, None
        return loss

    # -- root modules: throughput, probe batches (see instrument.roots) -------------------------

    def _watch_owners(self, optimizers: list[torch.optim.Optimizer]) -> None:
        """Watch the modules that own the optimizers' parameters, found without a global
        module hook: one left on during a compiled forward makes torch.compile recompile
        once it is removed."""
        if self._discovery.enabled:
            self._discovery.disable()
        params = [p for o in optimizers for g in o.param_groups for p in g["params"]]
        for root in owning_roots(params):
            self._roots.add(root)

    def _root_before(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        self._root_calls += 1
        if self._discovery.enabled and self._roles.all:  # a watched owner is called after all:
            self._discovery.disable()  # off before this (maybe compiled) forward runs
        self._root_depth += 1
        if self._root_depth > 1 or interception.is_suspended():
            return
        self._root_loss_seen = False
        if module.training and torch.is_grad_enabled() and self._guard.active(ROOTS):
            self._guard.call(ROOTS, self._count_and_keep, module, args, kwargs)

    def _count_and_keep(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        samples, tokens = batch_size_of(args, kwargs)
        if self._batch_size is None and samples:
            self._batch_size = samples
        self._samples += samples
        self._tokens += tokens
        if not self.probe_set.full:
            self.probe_set.record_forward(module, args, kwargs, samples)

    def _root_after(self, module: nn.Module, output: Any) -> None:
        self._root_depth = max(0, self._root_depth - 1)
        if self._root_depth or self._root_loss_seen or output is None:
            return
        if module.training and torch.is_grad_enabled() and not interception.is_suspended():
            self._guard.call(ROOTS, self._loss_from_output, module, output)

    def _loss_from_output(self, module: nn.Module, output: Any) -> None:
        """No loss call was seen during a forward that returned a loss: it was computed where
        gradlens does not look (inside a ``torch.compile``d graph, or by a loss gradlens does
        not intercept). Probes replay the module and read its returned loss."""
        if not self.probe_set.record_output_loss(module, output):
            return
        if self._softmax is not None and hasattr(module, "_orig_mod"):
            why = "the loss is computed inside a torch.compile'd forward"
            self.unavailable.setdefault(SOFTMAX, why)
            self._say_once(f"{SOFTMAX} unavailable: {why}")

    # -- helpers ---------------------------------------------------------------------------------

    def _owner_of(self, params: list[Tensor]) -> Tracked | None:
        """The recorded optimizer whose parameters are being clipped (tracked from now on)."""
        if not params or not self._guard.active(CAPTURE):
            return None
        tracked = self._roles.owner_of(params[0])
        if tracked is not None or id(params[0]) in self._unowned:
            return tracked
        for optimizer in list(self._known_optimizers):
            if any(p is params[0] for g in optimizer.param_groups for p in g["params"]):
                return self._tracked_for(optimizer)
        self._unowned.add(id(params[0]))  # no scan per step (cleared by a new optimizer)
        return None

    def _tracked_for(self, optimizer: torch.optim.Optimizer) -> Tracked | None:
        tracked = self._roles.by_optimizer.get(optimizer)
        if tracked is not None:
            return tracked
        if not self.auto and all(optimizer is not o for o in self.optimizers):
            return None  # explicit mode: only the optimizers the Lens was given
        params = [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]
        if not params:
            return None
        self._settle_discovery()
        if self.auto and not self._root_calls:
            # What the script calls is not the owner watched so far: torch.compile(model) or
            # DDP(model) wrapped it after the optimizer was made (look again), or the script
            # calls an inner module (a LightningModule's model): the next step's forward
            # finds it (the global hook is then on for one step only).
            self._watch_owners([optimizer])
            self._discovery.enable()
        self._serials += 1
        names = self._names(params, optimizer)
        recorder, decoder = self._recorder(params, names, self._serials)
        tracked = Tracked(recorder, decoder, self._serials, ids=frozenset(map(id, params)))
        self._roles.add(optimizer, tracked)
        self._hyperparameters.append(_hyperparameters(optimizer, self._serials))
        self._known_optimizers.add(optimizer)
        return tracked

    def _track_manual(self) -> Tracked | None:
        roots = self._settle_discovery()
        params: list[Tensor] = []
        seen: set[int] = set()
        for root in roots:
            for p in root.parameters():
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
        if not params:
            return None
        names = self._namer.names(params, owning_roots(params))
        recorder, decoder = self._recorder(params, names, 0, update_lag=1)
        return Tracked(recorder, decoder, 0, primary=True)

    def _settle_discovery(self) -> list[nn.Module]:
        """The root modules seen in forward so far (watched from now on)."""
        if self._discovery.enabled:
            self._discovery.disable()
        roots = self.models or self._discovery.roots()
        for root in roots:
            self._roots.add(root)
        return roots

    def _names(self, params: list[Tensor], optimizer: torch.optim.Optimizer) -> list[str]:
        """Names from the modules that own ``params``; the first time, the roots of every
        optimizer alive are named together (GAN: ``Generator.…`` and ``Discriminator.…``)."""
        scope = list(params)
        if self._serials == 1:
            for other in list(self._known_optimizers):
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
        return self._namer.names(params, roots, given)

    def _recorder(
        self, params: list[Tensor], names: list[str], serial: int, update_lag: int = 0
    ) -> tuple[StepRecorder, ChunkDecoder]:
        if self._device is None:
            self._device = _describe_device(params[0].device)
        detector = SpikeDetector(names, self.spike_config)
        on_stats = self._on_stats if self.dist.main else None
        signals = [Guarded(self._softmax, self._guard, SOFTMAX)] if self._softmax else []
        decoder = ChunkDecoder(
            detector, on_stats, serial=serial, rank=self.dist.rank, signals=signals
        )
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
            signals=signals,
        )
        return recorder, decoder

    def _info(self, tracked: Tracked, skipped: bool = False, optimizer: Any = None) -> StepInfo:
        now = time.perf_counter()
        lrs: tuple[Any, ...] = ()
        if optimizer is not None:
            lrs = tuple(_lr(g.get("lr")) for g in optimizer.param_groups)
        primary = tracked.primary
        return StepInfo(
            step=self.step if primary else tracked.steps,
            wall_time=time.time() - self._wall0,
            step_time=now - self._last_end if self.step > 0 and primary else None,
            samples=self._samples if primary else 0,
            tokens=self._tokens if primary else 0,
            lrs=lrs,
            has_loss=tracked.has_loss,
            skipped=skipped,
            primary=primary,
        )

    def _end_step(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        done = self.step
        self.step += 1
        if self._user is not None and done % self.every == self.every - 1:
            self._guard.call(USER, self._user.flush)
        self._scaled = None
        self._samples = self._tokens = 0
        if self._probes is not None:
            due = self._probes.due(done)
            if due:
                self._run_probes(due, done, optimizer)
        self._last_end = time.perf_counter()

    def _run_probes(self, probes: list[Any], step: int, optimizer: Any) -> None:
        assert self._probes is not None
        lrs = [float(_lr(g.get("lr"))) for g in optimizer.param_groups] if optimizer else []
        world = self.dist.world if self.dist.active and group_ready() else 1
        self._probes.run(probes, step, lrs, optimizer, self._update_fn, world)

    def _update_fn(self, objective: Objective) -> Callable[[], dict[str, Tensor] | None] | None:
        """Δθ of the last step by the objective's parameter names (primary optimizer only)."""
        primary = next((t for t in self._roles.all if t.primary), None)
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

    def _on_disabled(self, feature: str, reason: str) -> None:
        """A feature failed: an ``internal_error`` event (meta.json lists it at close)."""
        if self._writer is None or not self.dist.main:
            return
        nan = float("nan")
        self._writer.write(
            "events",
            {
                "step": [self.step],
                "kind": ["internal_error"],
                "metric": [feature],
                "layer": [""],
                "value": [nan],
                "baseline": [nan],
                "ratio": [nan],
                "detail": [reason],
            },
        )

    def _say_once(self, message: str) -> None:
        if message not in self._said and self.dist.main:
            self._said.add(message)
            print(f"gradlens: {message}", file=sys.stderr)

    def _all_tracked(self) -> list[Tracked]:
        return [*self._roles.all, *([self._manual] if self._manual else [])]

    def _on_stats(self, stats: LiveStats) -> None:
        self._last_stats = stats
        if self._status is not None:
            self._status.update(stats)

    def _summary(self, status: str) -> str:
        return f"gradlens: run {self.name!r} {status} after {self.step} steps → {self.run_dir}"

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
                "softmax_every": self.softmax_every,
                "param_every": self.param_every,
                "spikes": vars(self.spike_config),
                "mode": "auto" if self.auto else "explicit",
            },
        }


def _hyperparameters(optimizer: torch.optim.Optimizer, serial: int) -> dict[str, Any]:
    """The optimizer's class and the first group's settings, as JSON values."""
    out: dict[str, Any] = {"optimizer": type(optimizer).__name__, "serial": serial}
    group = optimizer.param_groups[0] if optimizer.param_groups else {}
    for key in ("lr", "betas", "momentum", "weight_decay", "eps", "nesterov"):
        value = group.get(key)
        if isinstance(value, Tensor) and value.numel() == 1:
            value = float(value)
        elif isinstance(value, tuple):
            value = [float(v) for v in value]
        if isinstance(value, bool | int | float | list):
            out[key] = value
    out["param_groups"] = len(optimizer.param_groups)
    return out


def _scaler_enabled(scaler: Any) -> bool:
    """``GradScaler(enabled=False)`` has no scale to read (nanoGPT on CPU or in bf16)."""
    is_enabled = getattr(scaler, "is_enabled", None)
    return bool(is_enabled()) if callable(is_enabled) else bool(getattr(scaler, "_enabled", True))


def _as_list(value: Any, kind: type, what: str) -> list[Any]:
    if value is None:
        return []
    items = [value] if isinstance(value, kind) else list(value)
    for item in items:
        if not isinstance(item, kind):
            raise TypeError(f"{what} must be a {kind.__name__} or a sequence of them")
    return items


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
