"""Benchmark models and batches, defined here so the benchmarks need no torchvision or data."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    def __init__(self, dim: int = 784, hidden: int = 1024, classes: int = 10) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _Basic(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.short(x))


class ResNet18(nn.Module):
    """ResNet-18 for 32×32 inputs (CIFAR layout): 11.2M parameters, 62 tensors."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()
        )
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [_Basic(cin, cout, stride), _Basic(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(512, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(self.stem(x))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


class _Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """A GPT with the loss computed in ``forward`` (nanoGPT style)."""

    def __init__(
        self, vocab: int = 512, block: int = 128, d: int = 256, layers: int = 4, heads: int = 4
    ) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(block, d)
        self.blocks = nn.Sequential(*[_Block(d, heads) for _ in range(layers)])
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        logits = self.head(self.ln_f(self.blocks(x)))
        if targets is None:
            return logits
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def make_case(name: str, device: str, generator: torch.Generator):
    """(model, inputs, loss_fn) for a named benchmark case; loss_fn(model, inputs) → loss."""
    g = generator

    def classify(model, batch):
        x, y = batch
        return F.cross_entropy(model(x), y)

    if name == "mlp":
        batch = (torch.randn(256, 784, generator=g), torch.randint(0, 10, (256,), generator=g))
        return MLP(), batch, classify
    if name == "mlp-small":
        batch = (torch.randn(128, 64, generator=g), torch.randint(0, 10, (128,), generator=g))
        return MLP(64, 256), batch, classify
    if name == "resnet18":
        batch = (
            torch.randn(256, 3, 32, 32, generator=g),
            torch.randint(0, 10, (256,), generator=g),
        )
        return ResNet18(), batch, classify
    if name.startswith("gpt"):
        cpu = name == "gpt-cpu"
        b, t, d, layers = (16, 64, 128, 2) if cpu else (32, 128, 256, 4)
        idx = torch.randint(0, 512, (b, t + 1), generator=g)
        return (
            GPT(block=t, d=d, layers=layers),
            (idx[:, :-1], idx[:, 1:]),
            (lambda model, batch: model(*batch)),
        )
    if name == "nanogpt":  # nanoGPT's setup: loss in forward, compiled, bf16 autocast
        b, t, d, layers = 32, 128, 256, 4
        idx = torch.randint(0, 512, (b, t + 1), generator=g)
        device_type = "cuda" if device == "cuda" else "cpu"

        def step_loss(model, batch):
            with torch.autocast(device_type, dtype=torch.bfloat16):
                return model(*batch)

        model = GPT(block=t, d=d, layers=layers).to(device)
        return torch.compile(model), (idx[:, :-1], idx[:, 1:]), step_loss
    raise ValueError(f"unknown case {name!r}")
