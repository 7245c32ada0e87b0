"""The callbacks' own logic without a real trainer: options, missing frameworks, which
logged values are forwarded, and gradlens failing inside a callback."""

from __future__ import annotations

import importlib
import sys
from types import SimpleNamespace

import pytest
import torch

import gradlens
from gradlens.integrations import _recording
from gradlens.integrations._recording import Recording


@pytest.mark.parametrize(
    ("module", "framework", "hint"),
    [("lightning", "lightning.pytorch", "pip install lightning"),
     ("transformers", "transformers", "pip install transformers")],
)  # fmt: skip
def test_a_missing_framework_says_what_to_install(monkeypatch, module, framework, hint):
    monkeypatch.setitem(sys.modules, framework, None)  # import of it raises ImportError
    monkeypatch.delitem(sys.modules, f"gradlens.integrations.{module}", raising=False)
    with pytest.raises(ImportError, match=hint):
        importlib.import_module(f"gradlens.integrations.{module}")


def test_options_are_checked_when_the_callback_is_made(tmp_path):
    with pytest.raises(ValueError, match="every must be"):
        Recording("GradlensCallback", {"every": 0})
    with pytest.raises(ValueError, match="probes must be"):
        Recording("GradlensCallback", {"probes": "all"})
    with pytest.raises(TypeError, match="model= is not an option"):
        Recording("GradlensCallback", {"model": torch.nn.Linear(1, 1)})
    with pytest.raises(TypeError):
        Recording("GradlensCallback", {"runs": tmp_path})
    assert not any(tmp_path.iterdir())  # nothing is recorded before training starts


def test_lightning_forwards_a_value_once_per_time_it_is_logged():
    pytest.importorskip("lightning")
    from gradlens.integrations.lightning import NewValues

    new = NewValues()
    loss, acc = torch.tensor(1.0), torch.tensor(0.5)
    assert new({"loss": loss.detach(), "acc": acc}) == {"loss": loss, "acc": acc}
    # the same memory handed out again (Lightning's views of one logged value): not new
    assert new({"loss": loss.detach(), "acc": acc.view(())}) == {}
    again = torch.tensor(1.0)  # logged anew with the same value: new
    assert set(new({"loss": again, "acc": acc})) == {"loss"}
    assert set(new({"loss": again, "acc": acc, "val": torch.tensor(2.0)})) == {"val"}


def test_transformers_logs_go_to_the_user_table_numbers_only(tmp_path, capsys):
    pytest.importorskip("transformers")
    from gradlens.integrations.transformers import GradlensCallback

    callback = GradlensCallback(runs_dir=tmp_path, name="hf")
    state = SimpleNamespace(global_step=0)
    callback.on_train_begin(None, state, None)
    logs = {"loss": 1.5, "epoch": 0.25, "note": "text", "flag": True, "t": torch.tensor(2.0)}
    callback.on_log(None, state, None, logs=logs)
    callback.on_log(None, state, None, logs={"x": torch.zeros(3)})  # not one number: skipped
    callback.on_train_end(None, state, None)
    run = gradlens.open_run(tmp_path / "hf")
    assert run.status == "finished"
    rows = run.table("user").sort_values("metric")
    assert rows.metric.tolist() == ["epoch", "loss", "t"]
    assert rows.value.tolist() == [0.25, 1.5, 2.0]
    assert rows.step.tolist() == [0, 0, 0]  # before the first optimizer step: 0
    assert "gradlens:" not in capsys.readouterr().err


def test_a_second_train_call_is_a_second_run_and_an_unended_one_is_failed(tmp_path):
    recording = Recording("GradlensCallback", {"runs_dir": tmp_path, "name": "r"})
    recording.start()
    recording.start()  # the first never reached its end hook
    recording.close("finished")
    assert gradlens.open_run(tmp_path / "r").status == "failed"
    assert gradlens.open_run(tmp_path / "r-2").status == "finished"


def test_a_process_that_dies_mid_training_marks_the_run(tmp_path, monkeypatch):
    recording = Recording("GradlensCallback", {"runs_dir": tmp_path, "name": "r"})
    recording.start()
    monkeypatch.setattr(sys, "last_exc", KeyboardInterrupt(), raising=False)
    recording._at_exit()
    run = gradlens.open_run(tmp_path / "r")
    assert (run.status, run.meta["error"]) == ("interrupted", "KeyboardInterrupt")


def test_gradlens_failing_to_start_leaves_training_alone(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("GRADLENS_STRICT")

    def broken(self):
        raise RuntimeError("broken start")

    monkeypatch.setattr(gradlens.Lens, "start", broken)
    recording = Recording("GradlensCallback", {"runs_dir": tmp_path})
    recording.start()
    recording.log({"loss": 1.0})
    recording.close("finished")
    assert recording.lens is None
    assert "gradlens: recording disabled: RuntimeError: broken start" in capsys.readouterr().err


def test_a_failing_forward_is_switched_off_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("GRADLENS_STRICT")

    def broken(values):
        raise RuntimeError("broken log")

    monkeypatch.setattr(_recording, "_log", broken)
    recording = Recording("GradlensCallback", {"runs_dir": tmp_path, "name": "r"})
    recording.start()
    recording.log({"loss": 1.0})
    recording.log({"loss": 2.0})
    recording.close("finished")
    err = capsys.readouterr().err
    assert err.count("gradlens: metric forwarding disabled: RuntimeError: broken log") == 1
    assert gradlens.open_run(tmp_path / "r").status == "finished"


class Wrapper(torch.optim.Optimizer):
    """Like accelerate's AcceleratedOptimizer: an Optimizer by type, not by __init__."""

    def __init__(self, optimizer):
        self.optimizer = optimizer

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    def step(self, closure=None):
        return self.optimizer.step(closure)


def test_a_lens_started_beside_an_optimizer_wrapper_records_the_real_optimizer(tmp_path):
    from gradlens import Lens

    model = torch.nn.Linear(2, 1)
    real = torch.optim.SGD(model.parameters(), lr=0.1)
    wrapper = Wrapper(real)  # what a trainer made before the run starts
    with Lens(runs_dir=tmp_path, name="wrapped") as lens:
        known = list(lens._tracking.known)
        for _ in range(3):
            model.zero_grad()
            model(torch.ones(4, 2)).sum().backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            wrapper.step()
    assert any(o is real for o in known) and not any(o is wrapper for o in known)
    run = gradlens.open_run(tmp_path / "wrapped")
    assert run.meta["optimizers"] == [run.meta["optimizers"][0]]  # one optimizer, not two
    assert sorted(run.table("layers").layer.unique()) == ["bias", "weight"]


def test_an_optimizer_only_a_reference_cycle_keeps_alive_does_not_name_the_run(tmp_path):
    """A notebook's earlier run leaves an optimizer that only a reference cycle keeps alive:
    it is collected at start, so this run's layers are not prefixed as one of two models."""
    import gc

    from gradlens import Lens

    gc.disable()
    try:
        old_model = torch.nn.Sequential(torch.nn.Linear(2, 2))
        old = torch.optim.SGD(old_model.parameters(), lr=0.1)
        old.cycle, old.model = old, old_model  # type: ignore[attr-defined]
        del old, old_model
        model = torch.nn.Linear(2, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with Lens(runs_dir=tmp_path, name="fresh"):
            for _ in range(3):
                opt.zero_grad()
                model(torch.ones(4, 2)).sum().backward()
                opt.step()
    finally:
        gc.enable()
    run = gradlens.open_run(tmp_path / "fresh")
    assert sorted(run.table("layers").layer.unique()) == ["bias", "weight"]
