"""The softmax signals captured from the loss calls of the training loop."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import gradlens


def test_k_dimensional_cross_entropy_counts_every_position_as_a_sample(runs_dir):
    """Logits (N, C, L) with targets (N, L): N·L = 42 softmax samples per step, not N."""
    conv = nn.Conv1d(4, 5, 1)
    opt = torch.optim.SGD(conv.parameters(), lr=0.1)
    x = torch.randn(6, 4, 7)
    y = torch.randint(0, 5, (6, 7))
    with gradlens.Lens(conv, opt, runs_dir=runs_dir, softmax_every=1) as lens:
        for _ in range(3):
            opt.zero_grad()
            F.cross_entropy(conv(x), y).backward()
            opt.step()
    softmax = gradlens.open_run(lens.run_dir).table("softmax")
    samples = softmax[softmax.metric == "num_samples"].value
    assert samples.tolist() == [42.0] * 3
