"""WGAN-GP (Gulrajani et al. 2017, in the style of the popular reference scripts): the critic
steps ``n_critic`` times per generator step; its loss adds a gradient penalty taken with
``torch.autograd.grad(..., create_graph=True)`` (double backward through the critic)."""

import argparse

import torch
import torch.nn as nn
from _trace import Trace, grad_norm

parser = argparse.ArgumentParser()
parser.add_argument("--out")
parser.add_argument("--iters", type=int, default=4)
parser.add_argument("--n_critic", type=int, default=3)
args = parser.parse_args()
torch.manual_seed(0)

generator = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 2))
critic = nn.Sequential(nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1))
opt_g = torch.optim.Adam(generator.parameters(), lr=1e-3, betas=(0.0, 0.9))
opt_c = torch.optim.Adam(critic.parameters(), lr=1e-3, betas=(0.0, 0.9))
lambda_gp = 10.0
trace = Trace()
trace.set(
    "names",
    [f"Sequential.{n}" for n, _ in critic.named_parameters()]
    + [f"Sequential[1].{n}" for n, _ in generator.named_parameters()],
)


def gradient_penalty(critic, real, fake):
    alpha = torch.rand(real.size(0), 1)
    interpolates = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    d_interpolates = critic(interpolates)
    gradients = torch.autograd.grad(
        outputs=d_interpolates,
        inputs=interpolates,
        grad_outputs=torch.ones_like(d_interpolates),
        create_graph=True,
        retain_graph=True,
        only_inputs=True,
    )[0]
    return ((gradients.norm(2, dim=1) - 1) ** 2).mean()


for it in range(args.iters):
    for _ in range(args.n_critic):
        real = torch.randn(64, 2) * 0.3 + torch.tensor([1.0, -1.0])
        fake = generator(torch.randn(64, 4)).detach()
        opt_c.zero_grad()
        gp = gradient_penalty(critic, real, fake)
        c_loss = critic(fake).mean() - critic(real).mean() + lambda_gp * gp
        c_loss.backward()
        trace.add("loss", c_loss.item())
        trace.add("grad_norm", grad_norm(critic.parameters()))
        opt_c.step()
    opt_g.zero_grad()
    g_loss = -critic(generator(torch.randn(64, 4))).mean()
    g_loss.backward()
    trace.add("loss@2", g_loss.item())
    trace.add("grad_norm@2", grad_norm(generator.parameters()))
    opt_g.step()
    print(f"iter {it}: critic {c_loss.item():.4f} gp {gp.item():.4f} gen {g_loss.item():.4f}")
trace.save(generator.state_dict(), critic.state_dict())
