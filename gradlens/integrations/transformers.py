"""``GradlensCallback`` for the Hugging Face ``Trainer``:
``Trainer(..., callbacks=[GradlensCallback()])`` records what ``gradlens watch`` records for
the same script, plus every ``logs`` dict the Trainer logs (its ``log_history``).

The run starts at ``on_train_begin`` (the optimizer exists by then; the automatic Lens finds
it) and ends at ``on_train_end`` (``finished``). The Trainer has no hook for an exception:
a ``train()`` that raises is marked ``failed`` (``interrupted`` for Ctrl-C) when the process
exits, or when the next ``train()`` starts. Every keyword is an option of
:class:`gradlens.Lens` (``runs_dir``, ``name``, ``probes``, ``every``, …).

Steps. gradlens step ``t`` is the ``t``-th optimizer step (from 0); the Trainer's
``state.global_step`` is ``t + 1`` after it, and ``log_history`` entries carry that
``step``. Each ``logs`` dict goes to the ``user`` table at the step of the last optimizer
step taken before it was logged, i.e. ``global_step - 1`` (0 before the first step), so it
lines up with gradlens's own rows: the training ``loss``/``grad_norm``/``learning_rate``
logged at ``global_step`` ``g`` (the mean over the last ``logging_steps`` steps) is at
``g - 1``, an evaluation's ``eval_loss`` after step ``t`` is at ``t``, the ``train_loss``
summary at the last step. Values that are not numbers are skipped.

Example:
    >>> from gradlens.integrations.transformers import GradlensCallback   # doctest: +SKIP
    >>> trainer = Trainer(model, args, train_dataset=ds, callbacks=[GradlensCallback()])
    >>> trainer.train()
"""

from __future__ import annotations

from typing import Any

from gradlens.integrations._recording import Recording

try:
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "gradlens.integrations.transformers needs Hugging Face Transformers: "
        "pip install transformers"
    ) from exc

__all__ = ["GradlensCallback"]


class GradlensCallback(TrainerCallback):
    """Records each ``trainer.train()`` as a gradlens run (see the module docstring).

    Args:
        **lens_options: keyword options of :class:`gradlens.Lens` (``runs_dir``, ``name``,
            ``probes``, ``every``, ``probe_options``, …).
    """

    def __init__(self, **lens_options: Any) -> None:
        self.recording = Recording(type(self).__name__, lens_options)

    @property
    def run_dir(self) -> Any:
        """The folder of the run being recorded (``None`` outside ``train``)."""
        return self.recording.lens.run_dir if self.recording.lens else None

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        self.recording.start()

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if logs:
            self.recording.log(logs)

    def on_train_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        self.recording.close("finished")
