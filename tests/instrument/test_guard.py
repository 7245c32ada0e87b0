"""An internal error switches one feature off with one line, an event and a meta entry;
training goes on unchanged. GRADLENS_STRICT=1 raises instead."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradlens
from gradlens.capture.recorder import StepRecorder
from gradlens.instrument.guard import REASON_CHARS, Guard, reason_of


def test_guard_disables_once_and_reports(monkeypatch, capsys):
    monkeypatch.setenv("GRADLENS_STRICT", "0")
    seen = []
    guard = Guard(lambda feature, reason: seen.append((feature, reason)))
    assert guard.call("demo", lambda: 1 / 0) is None
    assert guard.call("demo", lambda: 1) is None  # stays off
    assert guard.call("other", lambda: 2) == 2
    assert seen == [("demo", "ZeroDivisionError: division by zero")]
    assert (
        capsys.readouterr().err == "gradlens: demo disabled: ZeroDivisionError: division by zero\n"
    )


def test_a_dispatcher_wall_of_text_is_cut_to_its_first_sentence():
    backends = ", ".join(f"Backend{i}" for i in range(300))
    wall = RuntimeError(
        "Could not run 'aten::linalg_vector_norm' with arguments from the 'SparseCPU' backend. "
        f"This could be because the operator doesn't exist. It is only available for {backends}."
    )
    assert reason_of(wall) == (
        "RuntimeError: Could not run 'aten::linalg_vector_norm' with arguments from the "
        "'SparseCPU' backend."
    )
    no_sentence = reason_of(ValueError("x" * 1000))
    assert len(no_sentence) == len("ValueError: ") + REASON_CHARS and no_sentence.endswith("…")
    assert reason_of(ValueError("short. message")) == "ValueError: short. message"


def test_strict_mode_raises(monkeypatch):
    monkeypatch.setenv("GRADLENS_STRICT", "1")
    with pytest.raises(ZeroDivisionError):
        Guard().call("demo", lambda: 1 / 0)


def test_failing_capture_leaves_training_unchanged(runs_dir, monkeypatch, capsys):
    def broken(self, *args, **kwargs):
        raise RuntimeError("boom\nsecond line")

    def train(watched: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = nn.Linear(4, 3)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
        lens = gradlens.Lens(runs_dir=runs_dir, name="broken") if watched else None
        if lens:
            lens.start()
        for _ in range(5):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        if lens:
            lens.close()
        return [p.detach().clone() for p in model.parameters()]

    plain = train(watched=False)
    monkeypatch.setenv("GRADLENS_STRICT", "0")
    monkeypatch.setattr(StepRecorder, "before_update", broken)
    watched = train(watched=True)
    assert all(torch.equal(a, b) for a, b in zip(plain, watched, strict=True))
    err = capsys.readouterr().err
    assert err.count("gradlens: capture disabled: RuntimeError: boom\n") == 1
    run = gradlens.open_run(runs_dir / "broken")
    assert run.status == "finished"
    assert run.meta["disabled"] == {"capture": "RuntimeError: boom"}
    events = run.table("events")
    assert events.kind.tolist() == ["internal_error"]
    assert events.metric.tolist() == ["capture"]
