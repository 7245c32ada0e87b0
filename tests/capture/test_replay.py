"""When the gradient norms are replayed from a captured graph, and that the values are right.

The CUDA graph itself runs in tests/test_gpu.py (skipped without a GPU). Here a stand-in
capture with a graph's contract runs on the CPU: its replay recomputes the norms of the
tensors it captured into one output buffer it keeps, so a replay after the gradients moved
reads stale values, and an output held past the next replay changes under its holder.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradlens
import gradlens.capture.norms as norms_module
from gradlens.capture.replay import NormReplay, graphs_enabled
from gradlens.functional.norms import NormPlan


class StandIn:
    """A capture with ``cuda_capture``'s contract: fixed inputs, one output buffer."""

    def __init__(self, fail: bool = False, replays_fail: bool = False) -> None:
        self.fail, self.replays_fail = fail, replays_fail
        self.calls = 0

    def __call__(self, norms, tensors):
        self.calls += 1
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        captured = list(tensors)
        out = norms(captured).clone()

        def replay() -> None:
            if self.replays_fail:
                raise RuntimeError("CUDA error: invalid argument")
            out.copy_(norms(captured))

        return replay, out


def _grads(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(5, 3, generator=g), torch.randn(7, generator=g)]


def _expected(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([t.double().norm().float() for t in tensors])


def test_eager_until_the_addresses_held_then_one_capture_replayed():
    plan = NormPlan(_grads(0))
    capture = StandIn()
    replay = NormReplay(plan, capture)
    grads = _grads(0)
    for step in range(8):
        for g, new in zip(grads, _grads(step), strict=True):
            g.copy_(new)  # gradients updated in place: their addresses hold
        torch.testing.assert_close(replay(grads), _expected(grads))
    assert capture.calls == 1
    assert replay.captures == 1
    assert replay.replays == 8 - NormReplay.WARM


def test_gradients_that_moved_are_read_eagerly_and_captured_again():
    capture = StandIn()
    replay = NormReplay(NormPlan(_grads(0)), capture)
    grads = _grads(0)
    for step in range(4):
        grads[0].copy_(_grads(step)[0])
        replay(grads)
    assert replay.captures == 1
    moved = [grads[0], _grads(99)[1]]  # a new tensor: the graph would read the old memory
    torch.testing.assert_close(replay(moved), _expected(moved))
    assert replay.captures == 1 and replay.replays == 2
    for _ in range(NormReplay.WARM):
        torch.testing.assert_close(replay(moved), _expected(moved))
    torch.testing.assert_close(replay(moved), _expected(moved))
    assert replay.captures == 2


def test_addresses_that_keep_moving_stop_capturing():
    capture = StandIn()
    replay = NormReplay(NormPlan(_grads(0)), capture)
    grads = _grads(0)
    for step in range(40):
        if step % (NormReplay.WARM + 2) == 0:  # new tensors every few steps
            grads = _grads(step)
        torch.testing.assert_close(replay(grads), _expected(grads))
    assert replay.captures == NormReplay.MAX_CAPTURES == capture.calls


@pytest.mark.parametrize("fails", ["fail", "replays_fail"])
def test_a_failed_capture_or_replay_means_eager_for_good(fails):
    capture = StandIn(**{fails: True})
    replay = NormReplay(NormPlan(_grads(0)), capture)
    grads = _grads(0)
    for _ in range(10):
        torch.testing.assert_close(replay(grads), _expected(grads))
    assert replay.broken and capture.calls == 1 and replay.replays == 0


def test_off_unless_asked_and_never_on_the_cpu(monkeypatch):
    monkeypatch.delenv("GRADLENS_CUDA_GRAPHS", raising=False)
    assert not graphs_enabled(torch.device("cuda"))
    monkeypatch.setenv("GRADLENS_CUDA_GRAPHS", "1")
    assert graphs_enabled(torch.device("cuda"))
    assert not graphs_enabled(torch.device("cpu"))


def _train(runs_dir, name: str, set_to_none: bool, clip: bool):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    expected = []
    with gradlens.Lens(model, opt, runs_dir=runs_dir, name=name, every=4) as lens:
        for step in range(13):
            opt.zero_grad(set_to_none=set_to_none)
            F.cross_entropy(model(x[step % 4 :]), y[step % 4 :]).backward()
            expected.append([p.grad.double().norm().item() for p in model.parameters()])
            if clip:
                nn.utils.clip_grad_norm_(model.parameters(), 0.5)
            opt.step()
    run = gradlens.open_run(lens.run_dir)
    names = [n for n, _ in model.named_parameters()]
    norms = run.table("layers", filters=[("metric", "==", "grad_norm")])
    norms = norms.pivot(index="step", columns="layer", values="value")[names].to_numpy()
    tables = {t: _sorted(run.table(t)) for t in ("layers", "scalars")}
    return norms, expected, tables


_CLOCK = ("time", "step_time", "samples_per_s")


def _sorted(table):
    table = table[~table["metric"].isin(_CLOCK)]
    keys = [c for c in ("step", "metric", "layer", "index") if c in table.columns]
    return (
        table.astype({k: str for k in keys if k != "step"}).sort_values(keys).reset_index(drop=True)
    )


@pytest.mark.parametrize(("set_to_none", "clip"), [(False, False), (True, False), (False, True)])
def test_recorded_values_are_unchanged_with_replays(runs_dir, monkeypatch, set_to_none, clip):
    """Through a Lens: with the stand-in graph (kept past the step it was replayed for, its
    buffer would show the next step's norms) every value is the eager one, bitwise, with or
    without a clipping call (its pre-clip norms live across the step: never the buffer)."""
    eager, expected, eager_tables = _train(runs_dir, "eager", set_to_none, clip)
    made: list[NormReplay] = []

    def replay(plan):
        made.append(NormReplay(plan, StandIn()))
        return made[-1]

    monkeypatch.setattr(norms_module, "graphs_enabled", lambda device: True)
    monkeypatch.setattr(norms_module, "NormReplay", replay)
    graphed, _, tables = _train(runs_dir, "graphed", set_to_none, clip)
    np.testing.assert_array_equal(graphed, eager)
    np.testing.assert_allclose(graphed, expected, rtol=1e-6)
    for name, table in tables.items():
        pd.testing.assert_frame_equal(table, eager_tables[name])
    assert len(made) == 1
    if not set_to_none:  # persistent gradients: every unsampled step after warm-up replays
        assert made[0].replays >= 8


def test_the_run_says_whether_graphs_were_asked_for(runs_dir, monkeypatch):
    monkeypatch.setenv("GRADLENS_CUDA_GRAPHS", "1")
    _train(runs_dir, "asked", set_to_none=True, clip=False)
    monkeypatch.delenv("GRADLENS_CUDA_GRAPHS")
    _train(runs_dir, "default", set_to_none=True, clip=False)
    asked, default = (gradlens.open_run(runs_dir / n).meta["config"] for n in ("asked", "default"))
    assert asked["cuda_graphs"] is True and default["cuda_graphs"] is False
