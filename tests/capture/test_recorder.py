"""The step recorder: what it reads before and after each optimizer update."""

from __future__ import annotations

import torch
from torch import nn

from gradlens.capture.chunk import StepInfo
from gradlens.capture.recorder import StepRecorder


def test_update_after_a_skipped_step_is_zero():
    p = nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3)
    rec = StepRecorder([p], ["p"], lambda chunk: None)
    rec.before_update(None)
    rec.after_update(StepInfo(0, 0.0, None, 0, 0), applied=False)
    (delta,) = rec.last_update()
    assert torch.equal(delta, torch.zeros(3))
