"""Probe scheduling, options, isolation from training, and failure handling."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradlens
from gradlens.probes import REGISTRY, Probe, make_probes, parse_probe_options


class MeddlingProbe(Probe):
    """Does everything a careless probe could: train mode, RNG, in-place edits, backward."""

    name = "meddling"
    tables = ("collapse",)
    preset = "full"
    default_every = 5

    def __init__(
        self,
        every: int | None = None,
        at_end: bool = False,
        mode: str = "train",
        scale: float = 1.0,
    ):
        super().__init__(every, at_end, mode)
        self.scale = scale
        self.calls: list[int] = []

    def compute(self, ctx):
        self.calls.append(ctx.step)
        torch.rand(100)  # consumes the global RNG
        loss = ctx.objective.loss()  # train mode: BN statistics move, dropout draws
        loss.backward()  # writes .grad
        with torch.no_grad():
            for p in ctx.objective.params:
                p.add_(self.scale)  # perturbs the weights in place
        return {"collapse": {"step": [ctx.step], "metric": ["nc1"], "value": [loss.item()]}}


@pytest.fixture
def meddling():
    REGISTRY["meddling"] = f"{__name__}:MeddlingProbe"
    yield
    del REGISTRY["meddling"]


def _train(runs_dir, **lens_options):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.Dropout(0.3), nn.Linear(16, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    with gradlens.Lens(model, opt, runs_dir=runs_dir, **lens_options) as lens:
        for _ in range(12):
            x = torch.randn(32, 6, generator=g)
            y = (x[:, 0] > 0).long()
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    return model, lens


def test_probe_schedule_rows_and_bitwise_invariance(runs_dir, meddling):
    plain, _ = _train(runs_dir)
    probed, lens = _train(runs_dir, probes="full", probe_options={"meddling": {"at_end": True}})
    (probe,) = [p for p in lens.scheduled if p.name == "meddling"]
    assert probe.calls == [4, 9, 11]  # every 5th step, and at the end
    for (name, a), b in zip(plain.state_dict().items(), probed.state_dict().values()):
        assert torch.equal(a, b), name
    run = gradlens.open_run(lens.run_dir)
    assert run.table("collapse")["step"].tolist() == [4, 9, 11]
    seconds = run.table("scalars", filters=[("metric", "==", "probe_seconds.meddling")])
    assert len(seconds) == 3 and (seconds.value > 0).all()
    assert run.meta["config"]["probe_schedule"]["meddling"]["every"] == 5


def test_presets_and_options(meddling):
    assert [p.name for p in make_probes("cheap")] == []
    assert "meddling" in [p.name for p in make_probes("full")]
    (probe,) = [
        p
        for p in make_probes("cheap", {"meddling": {"every": 2, "scale": 0.5}})
        if p.name == "meddling"
    ]
    assert (probe.every, probe.scale) == (2, 0.5)
    with pytest.raises(ValueError, match="unknown probe 'nope'"):
        make_probes("full", {"nope": {}})
    with pytest.raises(ValueError, match="probe meddling"):
        make_probes("full", {"meddling": {"colour": 1}})
    assert MeddlingProbe.options()["scale"] == 1.0


def test_parse_probe_options():
    parsed = parse_probe_options(
        ["hessian.k=10", "hessian.tol=1e-4", "landscape.at_end=true", "hessian.mode=train"]
    )
    assert parsed == {
        "hessian": {"k": 10, "tol": 1e-4, "mode": "train"},
        "landscape": {"at_end": True},
    }
    with pytest.raises(ValueError, match=r"NAME\.OPTION=VALUE"):
        parse_probe_options(["hessian=3"])


class FailingProbe(MeddlingProbe):
    name = "failing"

    def compute(self, ctx):
        raise RuntimeError("probe bug")


def test_failing_probe_is_disabled_not_fatal(runs_dir, meddling, monkeypatch, capsys):
    REGISTRY["failing"] = f"{__name__}:FailingProbe"
    monkeypatch.setenv("GRADLENS_STRICT", "0")
    try:
        _, lens = _train(runs_dir, probe_options={"failing": {"every": 3}})
    finally:
        del REGISTRY["failing"]
    assert gradlens.open_run(lens.run_dir).status == "finished"
    assert capsys.readouterr().err.count("probe failing disabled: RuntimeError: probe bug") == 1


def test_presets_are_defined_once():
    """``gradlens.probes.base.PRESET_ORDER`` is the source; the Lens reuses it and the CLI's
    choices (kept torch-free, so spelled out there) list the same presets in the same order."""
    from gradlens.cli.main import Preset
    from gradlens.lens import PRESETS
    from gradlens.probes import PRESET_ORDER

    assert PRESETS is PRESET_ORDER
    assert tuple(p.value for p in Preset) == PRESET_ORDER
    assert {cls.preset for cls in map(type, make_probes("full"))} <= set(PRESET_ORDER)


def test_cli_update_sources_are_the_norm_signals():
    """The CLI's ``--updates-from`` choices are ``NormSignal``'s (the CLI starts without torch)."""
    from gradlens.capture.norms import UPDATE_SOURCES
    from gradlens.cli.main import UpdatesFrom

    assert tuple(u.value for u in UpdatesFrom) == UPDATE_SOURCES
