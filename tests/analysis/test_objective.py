"""Objective: weighted losses, replayed probe batches, and isolation from training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradlens.analysis.objective import (
    Objective,
    batches_from_data,
    batches_from_probe_set,
    extract_loss,
    restored_state,
)
from gradlens.watch import watch_script
from tests.conftest import EXAMPLES


def test_weighted_mean_over_ragged_batches_equals_full_batch():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))
    parts = [(x[:7], y[:7]), (x[7:], y[7:])]
    obj = Objective(model, batches_from_data(parts, F.cross_entropy))
    full = F.cross_entropy(model(x), y)
    torch.testing.assert_close(obj.loss(), full)
    w = {"weight": torch.zeros(3, 4)}
    torch.testing.assert_close(obj.loss(w), F.cross_entropy(x @ w["weight"].T + model.bias, y))


def test_extract_loss_forms():
    loss = torch.tensor(2.0)
    assert extract_loss(loss) == 2.0
    assert extract_loss((torch.zeros(3, 2), loss)) == 2.0
    assert extract_loss({"logits": torch.zeros(2), "loss": loss}) == 2.0
    with pytest.raises(ValueError, match="no scalar loss"):
        extract_loss(torch.zeros(3))


def test_isolated_restores_everything():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 2))
    model.train()
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    F.cross_entropy(model(x), y).backward()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.grad.clone() for p in model.parameters()]
    rng = torch.get_rng_state()
    obj = Objective(model, batches_from_data((x, y), F.cross_entropy), mode="train")
    with obj.isolated():
        assert model.training
        loss = obj.loss()  # train mode: BN statistics update, dropout draws random numbers
        torch.autograd.grad(loss, obj.params)
        with torch.no_grad():
            model[0].weight.add_(1.0)  # e.g. a finite-difference perturbation
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters()))
    assert torch.equal(rng, torch.get_rng_state())


def test_restored_state_on_exception():
    model = nn.Linear(2, 2)
    w = model.weight.detach().clone()
    with pytest.raises(RuntimeError), restored_state(model):
        with torch.no_grad():
            model.weight.mul_(3)
        raise RuntimeError("probe failed")
    assert torch.equal(model.weight, w)


@pytest.fixture
def kept_models(monkeypatch):
    """The modules of the probe batches, kept alive past the script (batches hold them
    weakly: a model the script drops is freed)."""
    from gradlens.instrument.probe_set import ProbeSet

    kept = []
    original = ProbeSet._keep

    def keep(self, batch):
        kept.append(batch.module)
        original(self, batch)

    monkeypatch.setattr(ProbeSet, "_keep", keep)
    return kept


def test_replay_of_a_loss_computed_inside_forward(runs_dir, kept_models):
    code, lens = watch_script(
        EXAMPLES / "tiny_gpt.py", ["--steps", "3"], runs_dir=runs_dir, status="off"
    )
    assert code == 0
    batches = batches_from_probe_set(lens.probe_set)
    assert len(batches) == 2 and batches[0].loss_fn is None
    model = lens.probe_set.batches[0].module
    obj = Objective(model, batches)
    with obj.isolated():
        loss = obj.loss()
    idx, targets = lens.probe_set.batches[0].args
    model.eval()
    with torch.no_grad():
        _, direct = model(idx, targets)
    torch.testing.assert_close(obj.batch_loss(batches[0]).detach(), direct)
    assert loss.ndim == 0 and torch.isfinite(loss)


def test_replay_of_a_loss_computed_outside_forward(runs_dir, kept_models):
    code, lens = watch_script(
        EXAMPLES / "mlp_classifier.py", ["--steps", "4"], runs_dir=runs_dir, status="off"
    )
    assert code == 0
    batches = batches_from_probe_set(lens.probe_set)
    assert batches and batches[0].loss_fn is not None
    recorded = lens.probe_set.batches[0]
    model = recorded.module
    obj = Objective(model, batches)
    with obj.isolated():
        got = obj.batch_loss(batches[0])
    expected = F.cross_entropy(model(*recorded.args), recorded.loss.target)
    torch.testing.assert_close(got, expected)


class _Denoiser(nn.Module):
    """A diffusion-style model: forward draws its own timesteps and noise (lucidrains style)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 4))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        noise = torch.randn_like(x0)
        t = torch.rand(len(x0), 1)
        xt = (1 - t).sqrt() * x0 + t.sqrt() * noise
        return F.mse_loss(self.net(torch.cat([xt, t], 1)), noise)


def test_a_forward_that_draws_noise_is_one_function_of_the_weights():
    """Every evaluation inside ``isolated`` starts from the same RNG state: a finite difference
    of the loss along a direction is the directional derivative (with fresh noise at every
    evaluation it was noise / 2ε), and the script's RNG stream is left where it was."""
    torch.manual_seed(0)
    model = _Denoiser().double()
    obj = Objective(model, batches_from_data([(torch.randn(32, 4, dtype=torch.float64),)], None))
    rng = torch.get_rng_state()
    with obj.isolated():
        first, again = obj.loss(), obj.loss()
        assert torch.equal(first, again)
        grads = torch.autograd.grad(obj.loss(), obj.params)
        direction = [torch.randn_like(p) for p in obj.params]
        eps = 1e-5
        moved = [
            {n: p + s * eps * d for n, p, d in zip(obj.names, obj.params, direction, strict=True)}
            for s in (1, -1)
        ]
        finite = (obj.loss(moved[0]) - obj.loss(moved[1])) / (2 * eps)
        exact = sum((g * d).sum() for g, d in zip(grads, direction, strict=True))
    torch.testing.assert_close(finite, exact, rtol=1e-6, atol=1e-9)
    assert torch.equal(rng, torch.get_rng_state())
