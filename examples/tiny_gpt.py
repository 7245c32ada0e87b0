"""A tiny GPT (nanoGPT-style: the loss is computed inside ``forward``) on generated text.

The text comes from a small template grammar, so it has real structure to learn and needs no
download. Trains on a CPU in well under a minute:

    python examples/tiny_gpt.py --steps 200
    gradlens watch examples/tiny_gpt.py --steps 200
"""

from __future__ import annotations

import argparse
import math
import random

import torch
import torch.nn.functional as F
from torch import nn

SUBJECTS = ["the cat", "a dog", "my friend", "the old man", "a small bird", "the teacher"]
VERBS = ["sees", "likes", "follows", "finds", "draws", "remembers"]
OBJECTS = ["the moon", "a red ball", "the river", "an apple", "the garden", "a long road"]
ENDINGS = [".", " today.", " again.", " at night.", " in the rain."]


def generate_text(n_sentences: int, seed: int) -> str:
    rng = random.Random(seed)
    return " ".join(
        f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}{rng.choice(ENDINGS)}"
        for _ in range(n_sentences)
    )


class Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    def __init__(self, vocab: int, block: int, d: int = 64, layers: int = 2, heads: int = 4):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(block, d)
        self.blocks = nn.Sequential(*[Block(d, heads) for _ in range(layers)])
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        t = idx.shape[1]
        x = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        logits = self.lm_head(self.ln_f(self.blocks(x)))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--block", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--spike-at", type=int, default=None, help="step with a LR spike")
    parser.add_argument("--spike-factor", type=float, default=100.0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    text = generate_text(4000, args.seed)
    chars = sorted(set(text))
    data = torch.tensor([chars.index(c) for c in text])
    model = TinyGPT(len(chars), args.block)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    data_rng = torch.Generator().manual_seed(args.seed)

    for step in range(args.steps):
        starts = torch.randint(
            0, len(data) - args.block - 1, (args.batch_size,), generator=data_rng
        )
        x = torch.stack([data[s : s + args.block] for s in starts.tolist()])
        y = torch.stack([data[s + 1 : s + args.block + 1] for s in starts.tolist()])
        scale = args.spike_factor if step == args.spike_at else 1.0
        for group in optimizer.param_groups:
            group["lr"] = args.lr * scale * min(1.0, (step + 1) / 20)  # linear warm-up
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {loss.item():.4f}  (uniform {math.log(len(chars)):.2f})")


if __name__ == "__main__":
    main()
