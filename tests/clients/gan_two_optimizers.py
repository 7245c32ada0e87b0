"""A GAN: two models, two optimizers stepped in turn every iteration (D then G)."""

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F
from _trace import Trace, grad_norm

parser = argparse.ArgumentParser()
parser.add_argument("--out")
args = parser.parse_args()
torch.manual_seed(0)


class Generator(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))

    def forward(self, z):
        return self.net(z)


class Discriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))

    def forward(self, x):
        return self.net(x)


G, D = Generator(), Discriminator()
opt_g = torch.optim.Adam(G.parameters(), lr=2e-3, betas=(0.5, 0.999))
opt_d = torch.optim.Adam(D.parameters(), lr=2e-3, betas=(0.5, 0.999))
trace = Trace()
trace.set(
    "names",
    [f"Discriminator.{n}" for n, _ in D.named_parameters()]
    + [f"Generator.{n}" for n, _ in G.named_parameters()],
)
for it in range(6):
    real = torch.randn(32, 2) * 0.5 + 1.0
    z = torch.randn(32, 4)
    opt_d.zero_grad()
    fake = G(z)
    d_loss = F.binary_cross_entropy_with_logits(
        D(real), torch.ones(32, 1)
    ) + F.binary_cross_entropy_with_logits(D(fake.detach()), torch.zeros(32, 1))
    d_loss.backward()
    trace.add("loss", d_loss.item())
    trace.add("grad_norm", grad_norm(D.parameters()))
    opt_d.step()
    opt_g.zero_grad()
    g_loss = F.binary_cross_entropy_with_logits(D(fake), torch.ones(32, 1))
    g_loss.backward()
    trace.add("loss@2", g_loss.item())
    trace.add("grad_norm@2", grad_norm(G.parameters()))
    opt_g.step()
    print(f"it {it}: d {d_loss.item():.4f} g {g_loss.item():.4f}")
trace.save(G.state_dict(), D.state_dict())
