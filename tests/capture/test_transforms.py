"""Inside ``torch.func`` transforms (per-sample gradients by ``vmap(grad(...))``, as in
PyTorch's per-sample-gradients tutorial and DP-SGD) gradlens's loss and model-call hooks step
aside: what they would keep are the transform's wrapped tensors, which fail once read outside
it. The step applied from the hand-assigned ``p.grad`` is recorded as usual."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

import gradlens


def _dp_sgd(steps: int = 6) -> tuple[nn.Module, list[list[float]]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def loss_fn(params, x, y):
        logits = functional_call(model, params, (x.unsqueeze(0),))
        return F.cross_entropy(logits, y.unsqueeze(0))

    per_sample = vmap(grad(loss_fn), in_dims=(None, 0, 0))
    g = torch.Generator().manual_seed(1)
    applied = []
    for _ in range(steps):
        x, y = torch.randn(32, 16, generator=g), torch.randint(0, 10, (32,), generator=g)
        grads = per_sample({k: v.detach() for k, v in model.named_parameters()}, x, y)
        norms = torch.stack([v.flatten(1).norm(dim=1) for v in grads.values()], 1).norm(dim=1)
        factor = (1.0 / (norms + 1e-6)).clamp(max=1.0)  # clip each sample's gradient to 1
        for name, p in model.named_parameters():
            noise = 0.5 * torch.randn(p.shape, generator=g)
            p.grad = (torch.einsum("i,i...->...", factor, grads[name]) + noise) / 32
        applied.append([float(p.grad.norm()) for p in model.parameters()])
        opt.step()
    return model, applied


def test_per_sample_gradients_by_vmap_are_recorded_without_errors(runs_dir, monkeypatch):
    monkeypatch.setenv("GRADLENS_STRICT", "1")  # an internal error raises instead
    plain, _ = _dp_sgd()
    options = {"hessian": {"every": 2, "k": 1, "trace": False}}
    with gradlens.Lens(runs_dir=runs_dir, softmax_every=1, probe_options=options) as lens:
        model, applied = _dp_sgd()
    for a, b in zip(plain.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)
    run = gradlens.open_run(lens.run_dir)
    assert run.status == "finished" and run.steps == 6
    assert not run.meta.get("disabled")
    layers = run.table("layers", filters=[("metric", "==", "grad_norm")])
    table = layers.pivot(index="step", columns="layer", values="value")
    names = [n for n, _ in model.named_parameters()]
    np.testing.assert_allclose(table[names].to_numpy(), applied, rtol=1e-5)
    # the vmapped size-1 calls are not the batch; their logits are not a softmax sample
    assert "samples_per_s" not in set(run.table("scalars").metric)
    softmax = set(run.table("softmax").metric)
    assert softmax == {"grad_weight_cos"}  # no softmax stats (num_samples, log_z, ...)
