"""Gradients unlike the usual dense real ones.

``--model recsys`` (DLRM / word2vec style): ``nn.Embedding(sparse=True)`` tables give sparse
gradients (with repeated rows), stepped by ``SparseAdam`` beside ``Adam`` for the dense tower
(PyTorch's recommended pairing), cross-entropy over item classes.
``--model spectral`` (Fourier neural operator style): a spectral convolution whose weights are
``torch.cfloat`` parameters, mixed with real ones, one Adam, MSE loss.

The trace holds per-step gradient norms and, per parameter, ‖Δθ‖ and cos(g, w) as the script
computes them: a sparse gradient through ``to_dense()``, a complex tensor through its real and
imaginary parts (``|z|² = a² + b²``, ``Re⟨w, g⟩``).
"""

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F
from _trace import Trace

parser = argparse.ArgumentParser()
parser.add_argument("--model", choices=["recsys", "spectral"], default="recsys")
parser.add_argument("--steps", type=int, default=12)
parser.add_argument("--out")
args = parser.parse_args()
torch.manual_seed(0)


def real(t):
    t = t.detach()
    t = t.to_dense() if t.is_sparse else t
    return torch.view_as_real(t).double() if t.is_complex() else t.double()


def norm(tensors):
    return float(torch.stack([real(t).norm() for t in tensors]).norm())


class Recommender(nn.Module):
    def __init__(self, users=200, items=50, dim=8):
        super().__init__()
        self.user = nn.Embedding(users, dim, sparse=True)
        self.history = nn.Embedding(items, dim, sparse=True)
        self.tower = nn.Sequential(nn.Linear(2 * dim, 32), nn.ReLU(), nn.Linear(32, items))

    def forward(self, user, history):
        return self.tower(torch.cat([self.user(user), self.history(history).mean(1)], dim=1))


class SpectralConv1d(nn.Module):
    def __init__(self, channels=4, modes=6):
        super().__init__()
        self.modes = modes
        scale = 1 / channels**2
        self.weight = nn.Parameter(
            scale * torch.rand(channels, channels, modes, dtype=torch.cfloat)
        )

    def forward(self, x):  # (batch, channels, grid)
        x_ft = torch.fft.rfft(x)
        out_ft = torch.zeros_like(x_ft)
        out_ft[:, :, : self.modes] = torch.einsum(
            "bix,iox->box", x_ft[:, :, : self.modes], self.weight
        )
        return torch.fft.irfft(out_ft, n=x.size(-1))


class Operator(nn.Module):
    def __init__(self, channels=4):
        super().__init__()
        self.lift = nn.Conv1d(1, channels, 1)
        self.spectral = SpectralConv1d(channels)
        self.skip = nn.Conv1d(channels, channels, 1)
        self.project = nn.Conv1d(channels, 1, 1)

    def forward(self, x):
        h = self.lift(x)
        return self.project(F.gelu(self.spectral(h) + self.skip(h)))


trace = Trace()
g = torch.Generator().manual_seed(3)
if args.model == "recsys":
    model = Recommender()
    embeddings = [model.user.weight, model.history.weight]
    optimizers = [
        torch.optim.SparseAdam(embeddings, lr=1e-2),
        torch.optim.Adam(model.tower.parameters(), lr=1e-3),
    ]
else:
    model = Operator()
    optimizers = [torch.optim.Adam(model.parameters(), lr=3e-3)]
names = [n for n, _ in model.named_parameters()]
trace.set("names", names)
for step in range(args.steps):
    for opt in optimizers:
        opt.zero_grad()
    if args.model == "recsys":
        user = torch.randint(0, 200, (32,), generator=g)
        history = torch.randint(0, 50, (32, 5), generator=g)
        loss = F.cross_entropy(model(user, history), torch.randint(0, 50, (32,), generator=g))
    else:
        x = torch.randn(16, 1, 32, generator=g)
        loss = F.mse_loss(model(x), torch.fft.irfft(torch.fft.rfft(x) * 0.5, n=32))
    loss.backward()
    params = dict(model.named_parameters())
    before = {n: p.detach().clone() for n, p in params.items()}
    for i, opt in enumerate(optimizers):
        suffix = f"@{i + 1}" if i else ""
        trace.add("loss" + suffix, loss.item())
        trace.add(
            "grad_norm" + suffix, norm([p.grad for grp in opt.param_groups for p in grp["params"]])
        )
    for n, p in params.items():
        w, gr = real(p), real(p.grad)
        trace.add(f"grad.{n}", float(gr.norm()))
        trace.add(f"cos.{n}", float((w * gr).sum() / (w.norm() * gr.norm())))
    for opt in optimizers:
        opt.step()
    for n, p in params.items():
        trace.add(f"update.{n}", float((real(p) - real(before[n])).norm()))
    print(f"step {step} loss {loss.item():.5f}")
trace.save(model.state_dict())
