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


def test_an_evaluation_forward_with_gradients_on_is_not_observed(runs_dir):
    """``model.eval()`` then a loss without ``no_grad`` (a common slip): its logits are not the
    training loop's, so they do not join the next step's softmax row (they used to: 288
    samples, the evaluation batch's logit norm)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 10), torch.randint(0, 3, (32,))
    x_val, y_val = torch.randn(512, 10) * 10, torch.randint(0, 3, (512,))
    norms = []
    with gradlens.Lens(model, opt, runs_dir=runs_dir, softmax_every=1) as lens:
        for _ in range(4):
            model.train()
            opt.zero_grad()
            logits = model(x)
            norms.append(logits.detach().double().norm(dim=1).mean().item())
            F.cross_entropy(logits, y).backward()
            opt.step()
            model.eval()
            F.cross_entropy(model(x_val), y_val)  # gradients on, never backpropagated
    softmax = gradlens.open_run(lens.run_dir).table("softmax")
    stats = softmax.pivot_table(index="step", columns="metric", values="value")
    assert stats.num_samples.tolist() == [32.0] * 4
    torch.testing.assert_close(stats.logit_norm.tolist(), norms, rtol=1e-5, atol=0)


def test_nll_loss_after_log_softmax_is_observed(runs_dir):
    """pytorch/examples' MNIST: the model returns ``log_softmax``, the loss is ``nll_loss``.
    The softmax rows are those of the logits for every shift-invariant stat; an ``nll_loss`` on
    other log-probabilities (a log of something else) is not a softmax to read."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = [(torch.randn(32, 10), torch.randint(0, 3, (32,))) for _ in range(3)]
    gaps = []
    with gradlens.Lens(model, opt, runs_dir=runs_dir, softmax_every=1) as lens:
        for x, y in data:
            opt.zero_grad()
            logits = model(x)
            top2 = logits.detach().topk(2, dim=1).values
            gaps.append((top2[:, 0] - top2[:, 1]).mean().item())
            F.nll_loss(F.log_softmax(logits, dim=1), y).backward()
            opt.step()
        opt.zero_grad()  # a step whose nll_loss reads log-sigmoids: no softmax row
        F.nll_loss(F.logsigmoid(model(data[0][0])), data[0][1]).backward()
        opt.step()
    softmax = gradlens.open_run(lens.run_dir).table("softmax")
    stats = softmax.pivot_table(index="step", columns="metric", values="value", dropna=False)
    assert stats.num_samples.tolist() == [32.0] * 3  # steps 0–2; step 3 not observed
    torch.testing.assert_close(stats.mean_logit_gap.tolist(), gaps, rtol=1e-5, atol=1e-6)
    assert stats.log_z_mean.isna().all() and stats.logit_norm.isna().all()


def _label_smoothed_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The Hugging Face Trainer's LabelSmoother: log_softmax + gather, no loss call."""
    log_probs = -logits.log_softmax(-1)
    nll = log_probs.gather(-1, y[:, None]).mean()
    return 0.9 * nll + 0.1 * log_probs.mean()


def test_a_run_without_a_cross_entropy_call_says_why_it_has_no_softmax_signals(runs_dir):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradlens.Lens(runs_dir=runs_dir) as lens:
        for _ in range(3):
            opt.zero_grad()
            _label_smoothed_loss(model(torch.randn(16, 4)), torch.randint(0, 3, (16,))).backward()
            opt.step()
    run = gradlens.open_run(lens.run_dir)
    assert run.steps == 3
    why = run.meta["unavailable"]["softmax signals"]
    assert why.startswith("no F.cross_entropy or F.nll_loss call on training logits was seen")
