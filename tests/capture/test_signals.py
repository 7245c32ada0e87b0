"""The per-step unit: a signal declares its slots; the row, the reduction and the tables follow."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gradlens.capture.chunk import Layout, StepInfo
from gradlens.capture.decode import ChunkDecoder
from gradlens.capture.norms import NormSignal
from gradlens.capture.recorder import StepRecorder
from gradlens.capture.signals import Guarded, LossSignal, Slot, StepSignal, StepView
from gradlens.capture.spikes import SpikeConfig, SpikeDetector
from gradlens.instrument.guard import Guard
from gradlens.store.schema import to_arrow


class MaxGrad(StepSignal):
    """The largest |g| of each tensor, every step: one class is all a new metric takes."""

    slots = (Slot("grad_max", per_tensor=True, reduce="local"), Slot("grad_max_all"))

    def before(self, view: StepView) -> dict[str, torch.Tensor]:
        per = torch.stack([g.abs().max() for g in view.grads() if g is not None])
        return {"grad_max": per, "grad_max_all": per.max().reshape(1)}


class Broken(StepSignal):
    slots = (Slot("broken"),)

    def before(self, view: StepView) -> dict[str, torch.Tensor]:
        raise RuntimeError("boom")


def _record(signals, steps=3):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    params = list(model.parameters())
    chunks = []
    recorder = StepRecorder(params, ["w", "b"], chunks.append, every=100, signals=signals)
    expected = []
    for step in range(steps):
        opt.zero_grad()
        loss = model(torch.randn(4, 3)).square().mean()
        loss.backward()
        expected.append([p.grad.abs().max().item() for p in params])
        recorder.before_update(loss.detach(), step=step)
        opt.step()
        recorder.after_update(StepInfo(step, 0.0, None, 4, 0))
    recorder.flush()
    detector = SpikeDetector(["w", "b"], SpikeConfig())
    decoder = ChunkDecoder(detector, signals=signals)
    (chunk,) = chunks
    tables: dict[str, list] = {}
    for table, columns in decoder(chunk):
        tables.setdefault(table, []).append(to_arrow(table, columns).to_pandas())
    return tables, np.array(expected)


def test_a_new_signal_is_one_class_and_lands_in_its_tables():
    tables, expected = _record([MaxGrad()])
    layers = next(t for t in tables["layers"] if "grad_max" in set(t.metric))
    got = layers.pivot(index="step", columns="layer", values="value")[["w", "b"]].to_numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    scalars = next(t for t in tables["scalars"] if "grad_max_all" in set(t.metric))
    np.testing.assert_allclose(scalars.value, expected.max(axis=1), rtol=1e-6)
    core = tables["scalars"][0]  # the built-in rows are unchanged by the added slots
    assert {"loss", "grad_norm"} <= set(core.metric)


def test_a_failing_signal_switches_off_alone(monkeypatch):
    monkeypatch.delenv("GRADLENS_STRICT", raising=False)
    guard = Guard()
    tables, _ = _record([Guarded(Broken(), guard, "broken signal")])
    assert "broken signal" in guard.disabled
    core = tables["scalars"][0]
    assert len(core[core.metric == "loss"]) == 3  # every step still recorded
    assert all("broken" not in set(t.metric) for t in tables["scalars"])


def test_two_signals_cannot_claim_one_slot():
    with pytest.raises(ValueError, match="grad_max"):
        Layout.of([MaxGrad(), MaxGrad()], ["w"])


def test_layout_puts_reduced_slots_first_and_undoes_the_sum_by_kind():
    p = torch.zeros(2)
    signals = [LossSignal(), NormSignal([p, p], torch.device("cpu"))]
    layout = Layout.of(signals, ["a", "b"], factors=(1.0, 2.0), world=2)
    assert layout.slots[-1].metric == "local_loss"  # the only local slot: last, not reduced
    assert layout.reduced == slice(0, layout.size - 1)
    row = np.zeros((1, layout.size))
    row[0, layout.where("loss")] = 3.0  # summed over 2 ranks
    row[0, layout.where("grad_norm")] = [9.0, 8.0]  # squared norms summed; b replicated twice
    row[0, layout.where("nonfinite")] = [4.0, 4.0]
    row[0, layout.where("local_loss")] = 1.25
    out = layout.unreduce(row)
    assert layout.column(out, "loss")[0] == 1.5
    np.testing.assert_allclose(layout.column(out, "grad_norm")[0], [3.0, 2.0])
    np.testing.assert_allclose(layout.column(out, "nonfinite")[0], [4.0, 2.0])
    assert layout.column(out, "local_loss")[0] == 1.25
    assert math.isnan(Slot("x").default)
    with pytest.raises(ValueError, match="reduce"):
        Slot("x", reduce="max")
