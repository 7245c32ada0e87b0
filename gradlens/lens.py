"""``Lens``: records one training run into a run directory.

Two ways in, same tables:
- explicit: ``with gradlens.Lens(model, optimizer): train()``;
- automatic (what ``gradlens watch`` uses): ``Lens()`` with no model finds every model and
  optimizer the script creates through PyTorch's global hooks.

The Lens holds the configuration, starts and closes the run, and routes what the
interception sees (``instrument.interception``) to its parts:
- ``capture.steps.StepCapture``: when each optimizer step is captured (hooks, loss, AMP,
  closures, clipping) and the run's step counter;
- ``capture.tracking.Tracking``: which optimizers and parameters are recorded, under which
  names, and which optimizer is the primary (``capture.roles``);
- ``capture.model_calls.ModelCalls``: samples, tokens and probe batches from the models' calls;
- the per-step signals (``capture.signals``; softmax collapse), ``gradlens.log`` rows, and
  the scheduled probes (``probes.runner.ProbeRunner``).

Nothing is attached to the user's model or optimizer (hooks are global or on the class, see
``instrument.roots``), nothing runs inside ``torch.compile`` tracing, and every feature runs
behind a :class:`~gradlens.instrument.guard.Guard`: an internal error switches that feature
off with one line and training goes on.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import sys
import time
from collections.abc import Sequence
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
from gradlens.capture.decode import ChunkDecoder
from gradlens.capture.facts import environment
from gradlens.capture.model_calls import ModelCalls
from gradlens.capture.norms import UPDATE_SOURCES
from gradlens.capture.output import RunOutput
from gradlens.capture.recorder import StepRecorder
from gradlens.capture.recorders import Recorders
from gradlens.capture.replay import graphs_asked
from gradlens.capture.script_metrics import ScriptMetrics
from gradlens.capture.signals import Guarded
from gradlens.capture.softmax import SoftmaxSignal
from gradlens.capture.spikes import SpikeConfig
from gradlens.capture.steps import StepCapture
from gradlens.capture.tracking import Tracking
from gradlens.instrument import interception
from gradlens.instrument.distributed import dist_info, group_ready
from gradlens.instrument.guard import Guard
from gradlens.instrument.live import MODES
from gradlens.instrument.probe_set import ProbeSet
from gradlens.instrument.processes import (
    ChildProcesses,
    children_note,
    detach_in_forked_children,
    worker_command,
)
from gradlens.instrument.roots import RootCalls
from gradlens.instrument.signals import HeldSignals
from gradlens.probes import PRESET_ORDER, make_probes
from gradlens.probes.runner import ProbeRunner
from gradlens.store.meta import valid_run_name

__all__ = ["PRESETS", "Lens", "default_runs_dir"]

PRESETS = PRESET_ORDER  # defined once, in gradlens.probes.base

# Feature names (what the guard switches off, what meta.json lists under "disabled").
SOFTMAX, ROOTS = "softmax signals", "model calls"


def default_runs_dir() -> Path:
    """``$GRADLENS_DIR`` or ``./runs``."""
    return Path(os.environ.get("GRADLENS_DIR", "runs"))


class Lens(interception.ListenerBase):
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
        track_updates: record ‖Δθ‖ on sampled steps.
        updates_from: where ‖Δθ‖ comes from: ``copy`` (−θ kept over the optimizer step of a
            sampled step, freed after it; fewest kernels) or ``optimizer`` (rebuilt from the
            optimizer's post-step state for SGD/Adam/AdamW, no copy over the step: for models
            whose memory peaks in the optimizer step; others fall back to ``copy``).
        track_softmax: record softmax-collapse signals from the training cross-entropy
            calls of every ``softmax_every``-th step, and the gradient/weight cosines every
            ``cos_every`` steps.
        param_every: parameter and update norms (‖θ‖, ‖Δθ‖) every this many steps, and at
            steps where a probe runs; gradient norms, loss and non-finite flags every step.
        status: status line on stderr: ``off`` (default), ``auto``, ``live`` or ``plain``.
        keep_untouched: ``False`` (``gradlens watch``): a run that ends well having seen no
            model, loss or optimizer, and holding no row, is removed (``train.py --help``).

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
        updates_from: str = "copy",
        track_softmax: bool = True,
        cos_every: int = 20,
        softmax_every: int = 20,
        param_every: int = 10,
        status: str = "off",
        command: str | None = None,
        argv: Sequence[str] | None = None,
        keep_untouched: bool = True,
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
        if updates_from not in UPDATE_SOURCES:
            raise ValueError(f"updates_from must be one of {UPDATE_SOURCES}, got {updates_from!r}")
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
        self.track_updates, self.updates_from = track_updates, updates_from
        self.track_softmax = track_softmax
        self.cos_every = cos_every
        self.softmax_every, self.param_every = softmax_every, param_every
        self.command = command or " ".join(sys.argv)
        # False (gradlens watch): a run that saw no model, loss or optimizer is not kept
        self.keep_untouched = keep_untouched
        self.argv = list(argv) if argv is not None else list(sys.argv)
        self.dist = dist_info()
        self.probe_set = ProbeSet(probe_batches)
        self.scheduled = make_probes(probes, probe_options)
        self._worker_options = {  # a spawned worker's Lens (gradlens.workers): JSON-ready
            "every": every,
            "flush_secs": flush_secs,
            "probes": probes,
            "probe_options": probe_options,
            "probe_batches": probe_batches,
            "spikes": dataclasses.asdict(self.spike_config),
            "track_updates": track_updates,
            "updates_from": updates_from,
            "track_softmax": track_softmax,
            "cos_every": cos_every,
            "softmax_every": softmax_every,
            "param_every": param_every,
        }
        self.unavailable: dict[str, str] = {}  # signal → why it cannot be recorded here
        self._output = RunOutput(self.runs_dir, self.name, self.dist, status)
        self._guard = Guard(self._on_disabled)
        self._guard.quiet = not self.dist.main
        self._softmax: SoftmaxSignal | None = None
        self._script: ScriptMetrics | None = None  # gradlens.log, evaluation (rank 0)
        self._probes: ProbeRunner | None = None
        self._calls = ModelCalls(self._guard, self.probe_set, self._on_call, self._compiled_loss)
        self._children = ChildProcesses()  # processes the script starts (instrument.processes)
        self.forked_child = False  # this process is a fork of the one recording the run
        self._training_losses = False  # a loss call after a training forward was seen
        self._roots = RootCalls(self._calls.before, self._calls.after)
        self._tracking = Tracking(self.models, self.optimizers, self._recorder, self._roots.add)
        self._steps = StepCapture(
            self._tracking,
            self._calls,
            self._guard,
            param_every=param_every,
            due=self._probe_due,
            on_end=self._end_step,
            on_unseen=lambda feature, why: self._steps_unseen(why, feature),
        )
        self._calls.progress = lambda: (self._steps.backwards, self._steps.closure_done)
        self._handles: list[RemovableHandle] = []
        self._wall0 = 0.0
        self._recorders: Recorders | None = None  # made at the first captured step
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
        self._wall0 = time.time()
        self._steps.start(self._wall0)
        writer = self._output.open(self._initial_meta())
        self.name = self._output.name
        if self.track_softmax and self.dist.main:  # rank 0's logits (each rank sees its own)
            self._softmax = SoftmaxSignal(self.cos_every, every=self.softmax_every)
        say = self._output.say_once
        self._probes = ProbeRunner(
            self.scheduled,
            self.probe_set,
            self._guard,
            writer.write,
            say,
            writes=self.dist.main,
            unavailable=self.unavailable,  # probes that cannot measure this run, and why
            trained=self._trained_params,
        )
        if self.dist.main:
            self._script = ScriptMetrics(writer.submit, say, self._guard, self.every)
            user_log.attach(self._log_user)
        interception.install(self._steps)  # backward, GradScaler, clipping
        interception.install(self)  # loss calls, optimizers, loaders
        self._tracking.start()
        # Global hooks (filtered to the given optimizers in explicit mode): nothing on the
        # optimizer object that pickle, deepcopy or state_dict could see.
        self._handles.append(register_optimizer_step_pre_hook(self._steps.pre_step))
        self._handles.append(register_optimizer_step_post_hook(self._steps.post_step))
        atexit.register(self._at_exit)
        detach_in_forked_children(self)
        return self

    def close(
        self, status: str = "finished", exit_code: int | None = None, error: str | None = None
    ) -> None:
        """Flush everything, compact the tables and write the final status."""
        if self._closed or not self._started:
            return
        atexit.unregister(self._at_exit)
        try:  # final probes stay interruptible; the teardown is atomic w.r.t. signals
            self._steps.settle()  # a step no hook saw, pending until its weights moved
            if status == "finished" and self.step > 0 and self._probes is not None:
                primary = self._tracking.roles.primary
                self._probes.at_close(self.step - 1, primary, self._last_update, self._world())
        finally:
            with HeldSignals() as held:  # inside watch the outer hold is the one that holds
                self._teardown(status, exit_code, error)
                if held.first is not None and status == "finished":
                    self._output.interrupted_while_closing(held.first)

    def _detach(self) -> None:
        """Remove every patch and hook this Lens put on the process."""
        self._closed = True
        interception.uninstall(self)
        interception.uninstall(self._steps)
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._roots.close()
        self._tracking.discovery.disable()
        user_log.detach(self._log_user)

    def forked(self) -> None:
        """In a forked child (``instrument.processes``): stop recording there, write nothing;
        the run is the parent's."""
        atexit.unregister(self._at_exit)
        self.forked_child = True
        self._detach()

    def _teardown(self, status: str, exit_code: int | None, error: str | None) -> None:
        """Remove every patch and hook, flush, compact and finalize — always, in this order."""
        self._detach()
        self._steps.finish()
        if self._script is not None:
            self._script.flush()
        note = children_note(self._children, self.runs_dir) if self.step == 0 else None
        if self.step == 0 and note is None and self._training_losses and not self._steps.backwards:
            note = (
                "training loss calls were seen but no backward() and no optimizer step: "
                "gradients taken with torch.autograd.grad and applied by hand are not recorded"
            )
        if note is not None:
            self._steps_unseen(note)
        self._guard.call("run notes", self._missing_signals)
        untouched = not (
            self.keep_untouched
            or self.step
            or self._tracking.all()
            or self._training_losses
            or self.unavailable
            or self._calls.batch_size is not None
        )  # e.g. gradlens watch train.py --help
        self._output.finish(
            status,
            self.step,
            untouched=untouched,
            exit_code=exit_code,
            error=error,
            world_size=self.dist.world,
            disabled=dict(self._guard.disabled),
            unavailable=dict(self.unavailable),
            **self._probe_scope(),
            **self._known_meta(),
        )

    def _known_meta(self) -> dict[str, Any]:
        """What ``meta.json`` learns once training runs: device, layers, optimizers."""
        return {
            "device": self._recorders.device if self._recorders else None,
            "layers": self._tracking.retired_layers
            + sum(t.recorder.layout.n for t in self._tracking.all()),
            "optimizers": self._tracking.hyperparameters,
            "phases": list(self._tracking.roles.phases),
            "hyperparameters": {
                **next(iter(self._tracking.hyperparameters), {}),
                "batch_size": self._calls.batch_size,
            },
        }

    def _at_exit(self) -> None:
        self.close("finished")

    # -- interception listener (see gradlens.instrument.interception) ---------------------------

    def on_loss_call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self._steps.closure_done:
            return
        self._calls.loss_seen = True
        if not self.probe_set.full:
            self._guard.call(
                "probe batches",
                self.probe_set.record_loss,
                name,
                args,
                kwargs,
                self._calls.depth > 0,
            )
        if self._calls.training:
            self._training_losses = True
            if self._softmax is not None:
                self._guard.call(SOFTMAX, self._softmax.observe_call, name, args, kwargs, self.step)
        elif self._script is not None and torch.is_grad_enabled():  # eval() without no_grad?
            script, step = self._script, max(self.step - 1, 0)
            interception.request_loss_result(
                lambda value: script.held_eval_loss(name, args, kwargs, value, step)
            )

    def on_optimizer_created(self, optimizer: torch.optim.Optimizer) -> None:
        self._guard.call(ROOTS, self._tracking.created, optimizer)

    def on_eval_loss(
        self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], value: Any
    ) -> None:
        """A loss computed with gradients off: evaluation, at the last optimizer step."""
        if self._script is not None:
            self._script.eval_loss(name, args, kwargs, value, max(self.step - 1, 0))

    def on_loader_iter(self, loader: Any) -> None:
        if self._script is not None:
            self._script.loader_started()

    def on_process_start(self, process: Any) -> None:
        method = self._children.saw(process)
        if method == "spawn" and self.auto and self.dist.world == 1 and self._started:
            name = f"{self.name}-w{len(self._children.workers)}"  # recorded as its own run
            self._children.workers.append(name)
            config = {
                "runs_dir": str(self.runs_dir),
                "name": name,
                "command": f"{self.command} (worker {name})",
                "argv": self.argv,
                "options": self._worker_options,
            }
            interception.bootstrap_next_spawn(worker_command(config))

    def after_process_start(self, process: Any) -> None:
        interception.bootstrap_next_spawn(None)

    def on_backward(self, tensor: Tensor) -> None:
        if self._script is not None:
            self._script.backward()  # held evaluation calls were the training loss

    def _log_user(self, values: Any, step: int | None) -> None:
        """``gradlens.log``: at the last optimizer step (or ``step``)."""
        if self._script is not None:
            self._script.log(values, max(self.step - 1, 0) if step is None else step)

    # -- helpers ---------------------------------------------------------------------------------

    def _on_call(self) -> None:
        self._tracking.called()
        if self._script is not None:
            self._script.model_called()  # held evaluation calls were evaluations

    @property
    def step(self) -> int:
        """Optimizer steps of the run so far (the primary optimizer's)."""
        return self._steps.step

    def _probe_due(self, step: int) -> bool:
        return self._probes is not None and bool(self._probes.due(step))

    def _missing_signals(self) -> None:
        """At close: signals the run could not get at all, listed with why (``meta.json``
        ``unavailable``) rather than silently missing."""
        if self.step > 0 and self._calls.batch_size is None and self.dist.main:
            self.unavailable.setdefault(
                "throughput",
                "no training call of the model itself was seen (the script calls its methods, "
                "e.g. agent.get_action_and_value(x), or a function): samples per step unknown",
            )
        softmax_on = self._softmax is not None and SOFTMAX not in self._guard.disabled
        if softmax_on and self._softmax is not None and not self._softmax.observed and self.step:
            self.unavailable.setdefault(
                SOFTMAX,
                "no F.cross_entropy or F.nll_loss call on training logits was seen (a "
                "regression loss, or one computed by hand: log_softmax + gather, as the "
                "Hugging Face Trainer's label smoothing)",
            )
        if self._probes is not None:
            self._probes.finish()

    def _steps_unseen(self, why: str, feature: str = "step capture") -> None:
        self.unavailable.setdefault(feature, why)
        self._say_once(why)

    def _compiled_loss(self) -> None:
        """A compiled forward returned the loss: the logits never reach a loss call."""
        if self._softmax is not None:
            why = "the loss is computed inside a torch.compile'd forward"
            self.unavailable.setdefault(SOFTMAX, why)
            self._say_once(f"{SOFTMAX} unavailable: {why}")

    def _recorder(
        self, params: list[Tensor], names: list[str], serial: int, update_lag: int = 0
    ) -> tuple[StepRecorder, ChunkDecoder]:
        if self._recorders is None:  # at the first step: the process group is up by then
            world = self._world()
            if self.dist.active and world == 1:
                self._say_once(
                    "no process group at the first step: each rank records its own values"
                )
            writer = self._output.writer
            assert writer is not None
            self._recorders = Recorders(
                writer,
                every=self.every,
                flush_secs=self.flush_secs,
                track_updates=self.track_updates,
                updates_from=self.updates_from,
                spikes=self.spike_config,
                signals=[Guarded(self._softmax, self._guard, SOFTMAX)] if self._softmax else [],
                rank=self.dist.rank,
                world=world,
                on_stats=self._output.on_stats if self.dist.main else None,
            )
        return self._recorders(params, names, serial, update_lag)

    def _end_step(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """After the run's step ``self.step - 1`` (its primary optimizer's step)."""
        done = self.step - 1
        if done == 0:  # a run killed later still says where and how it trained
            self._guard.call("meta", lambda: self._output.note(**self._known_meta()))
        if self._script is not None:
            self._script.after_step(done)
        if self._probes is not None:
            self._probes.after_step(done, optimizer, self._last_update, self._world())

    def _last_update(self) -> tuple[list[Tensor], list[Tensor]] | None:
        """The primary optimizer's parameters and Δθ at its last step (probes' direction)."""
        primary = next((t for t in self._tracking.roles.all if t.primary), None)
        delta = primary.recorder.last_update() if primary is not None else None
        return None if primary is None or delta is None else (primary.recorder.params, delta)

    def _trained_params(self) -> list[Tensor]:
        return [p for t in self._tracking.all() for p in t.recorder.params]

    def _probe_scope(self) -> dict[str, Any]:
        scope = self._probes.scope if self._probes is not None else {}
        return {"probe_scope": dict(scope)} if scope else {}

    def _world(self) -> int:
        return self.dist.world if self.dist.active and group_ready() else 1

    def _on_disabled(self, feature: str, reason: str) -> None:
        self._output.internal_error(self.step, feature, reason)

    def _say_once(self, message: str) -> None:
        self._output.say_once(message)

    @property
    def run_dir(self) -> Path | None:
        """The run's folder (once started)."""
        return self._output.run_dir

    def _initial_meta(self) -> dict[str, Any]:
        return {
            **environment(self.name, self.command, self.argv, self._wall0),
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
                "updates_from": self.updates_from,
                "cuda_graphs": graphs_asked(),
                "track_softmax": self.track_softmax,
                "cos_every": self.cos_every,
                "softmax_every": self.softmax_every,
                "param_every": self.param_every,
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
