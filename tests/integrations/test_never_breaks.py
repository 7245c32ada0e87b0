"""gradlens failing inside a callback switches itself off with one line; the training is the
one a plain run trains, bitwise (a real Lightning fit, in this process)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradlens
from gradlens.integrations import _recording

L = pytest.importorskip("lightning")
from gradlens.integrations.lightning import GradlensCallback, NewValues  # noqa: E402

pytestmark = pytest.mark.slow


class Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.model(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def fit(callbacks: list) -> dict[str, torch.Tensor]:
    L.seed_everything(0, verbose=False)
    module = Tiny()
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(32, 6, generator=g), torch.arange(32) % 2)
    trainer = L.Trainer(
        max_steps=6, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=8))
    return module.state_dict()


@pytest.fixture(scope="module")
def plain() -> dict[str, torch.Tensor]:
    return fit([])


def assert_same(weights: dict, plain: dict) -> None:
    assert weights.keys() == plain.keys()
    for key, value in plain.items():
        assert torch.equal(weights[key], value), key


def test_the_callback_alone_changes_nothing(tmp_path, plain):
    assert_same(fit([GradlensCallback(runs_dir=tmp_path, name="r")]), plain)
    run = gradlens.open_run(tmp_path / "r")
    assert run.status == "finished"
    assert sorted(run.table("user").step) == list(range(6))


def test_a_broken_start_records_nothing_and_trains_the_same(tmp_path, plain, monkeypatch, capsys):
    monkeypatch.delenv("GRADLENS_STRICT")

    def broken(self):
        raise RuntimeError("broken start")

    monkeypatch.setattr(gradlens.Lens, "start", broken)
    assert_same(fit([GradlensCallback(runs_dir=tmp_path)]), plain)
    err = capsys.readouterr().err
    assert "gradlens: recording disabled: RuntimeError: broken start" in err


def test_a_broken_forward_keeps_the_run_and_trains_the_same(tmp_path, plain, monkeypatch, capsys):
    monkeypatch.delenv("GRADLENS_STRICT")

    def broken(self, metrics):
        raise RuntimeError("broken metrics")

    monkeypatch.setattr(NewValues, "__call__", broken)
    assert_same(fit([GradlensCallback(runs_dir=tmp_path, name="r")]), plain)
    err = capsys.readouterr().err
    assert err.count("gradlens: metric forwarding disabled: RuntimeError: broken metrics") == 1
    run = gradlens.open_run(tmp_path / "r")
    assert run.status == "finished"
    assert sorted(run.table("scalars", filters=[("metric", "==", "loss")]).step) == list(range(6))
    assert run.table("user").empty


def test_recording_log_errors_do_not_reach_the_trainer(tmp_path, plain, monkeypatch, capsys):
    monkeypatch.delenv("GRADLENS_STRICT")
    monkeypatch.setattr(_recording, "_log", lambda values: 1 / 0)
    assert_same(fit([GradlensCallback(runs_dir=tmp_path, name="r")]), plain)
    assert "metric forwarding disabled: ZeroDivisionError" in capsys.readouterr().err
