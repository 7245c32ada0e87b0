"""``GradlensCallback`` for Lightning: ``Trainer(callbacks=[GradlensCallback()])`` records
what ``gradlens watch`` records for the same script, plus what ``self.log(...)`` logged.

The run starts at ``on_fit_start`` (the optimizers exist by then; the automatic Lens finds
them) and ends at ``on_fit_end`` (``finished``) or ``on_exception`` (``failed``, or
``interrupted`` for Ctrl-C). Every keyword is an option of :class:`gradlens.Lens`
(``runs_dir``, ``name``, ``probes``, ``every``, …).

Steps. gradlens step ``t`` is the ``t``-th optimizer step (from 0); Lightning's
``trainer.global_step`` is ``t + 1`` after it. A value ``self.log`` produced goes to the
``user`` table at the step of the last optimizer step taken before it was logged, i.e.
``global_step - 1`` (0 before the first step), so it lines up with gradlens's own rows:

- a training metric (``on_step``) of the batch whose optimizer step was ``t``: at ``t``;
- a validation metric (``on_epoch``, the default in ``validation_step``) of a validation run
  after step ``t``: at ``t``; the sanity check before training is not forwarded;
- an epoch-level training metric (``on_epoch=True``, ``name_epoch``): at the epoch's last step.

Values are forwarded when Lightning has them for its loggers (``trainer.logged_metrics``): a
value is sent once, when it was logged anew, not again at every later step. Micro-batches of
gradient accumulation that end without an optimizer step are not forwarded (Lightning does
not log them either). With several optimizers gradlens counts the steps of its primary one:
the user rows follow gradlens's step, not ``global_step``.

Example:
    >>> from gradlens.integrations.lightning import GradlensCallback   # doctest: +SKIP
    >>> trainer = L.Trainer(max_epochs=3, callbacks=[GradlensCallback(name="baseline")])
    >>> trainer.fit(model, train_loader, val_loader)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from gradlens.integrations._recording import Recording, outcome

try:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import Callback
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "gradlens.integrations.lightning needs Lightning: pip install lightning"
    ) from exc

__all__ = ["GradlensCallback"]


class GradlensCallback(Callback):
    """Records each ``trainer.fit`` as a gradlens run (see the module docstring).

    Args:
        **lens_options: keyword options of :class:`gradlens.Lens` (``runs_dir``, ``name``,
            ``probes``, ``every``, ``probe_options``, …).
    """

    def __init__(self, **lens_options: Any) -> None:
        self.recording = Recording(type(self).__name__, lens_options)
        self._new = NewValues()
        self._steps_before = 0  # trainer.global_step when the current batch started
        self._stepped = False  # the last training batch took an optimizer step

    @property
    def run_dir(self) -> Any:
        """The folder of the run being recorded (``None`` outside ``fit``)."""
        return self.recording.lens.run_dir if self.recording.lens else None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._new = NewValues()
        self._stepped = False
        self.recording.start()

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._stepped:  # what the module logged in its own on_train_batch_end (after ours)
            self._forward(trainer)
        self._stepped = False
        self._steps_before = trainer.global_step

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if trainer.global_step != self._steps_before:
            self._stepped = True
            self._forward(trainer)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._forward(trainer)  # what the module logged in its on_train_epoch_end

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._forward(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._forward(trainer)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._forward(trainer)
        self.recording.close("finished")

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self.recording.close(*outcome(exception))

    def _forward(self, trainer: pl.Trainer) -> None:
        self.recording.guard.call("metric forwarding", self._forward_new, trainer)

    def _forward_new(self, trainer: pl.Trainer) -> None:
        new = self._new(trainer.logged_metrics)
        if new:
            self.recording.log(new)


class NewValues:
    """The entries of a metrics dict that were logged since the last call.

    Lightning stores each logged value in a new tensor (a clone), and hands out views of it
    until the name is logged again. A view of the same memory is the same value; holding the
    last one seen keeps that memory from being reused by a later value.
    """

    def __init__(self) -> None:
        self._last: dict[str, Any] = {}

    def __call__(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        new: dict[str, Any] = {}
        for name, value in metrics.items():
            if name in self._last and _same(self._last[name], value):
                continue
            self._last[name] = value
            new[name] = value
        return new


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return (
            a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
            and a.storage_offset() == b.storage_offset()
            and a.device == b.device
        )
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return False
    return bool(a == b)
