"""nanoGPT's train.py idioms: loss computed inside forward, GradScaler(enabled=False) on CPU,
autocast context, gradient accumulation, cosine LR with warm-up set per iteration, clipping,
torch.compile (--compile), an eval loop under no_grad, a checkpoint dict saved with
torch.save."""

import argparse
import math
import os
import tempfile
from contextlib import nullcontext

import torch
import torch.nn as nn
from _trace import Trace
from torch.nn import functional as F

parser = argparse.ArgumentParser()
parser.add_argument("--out")
parser.add_argument("--compile", default="")  # a backend name, e.g. aot_eager
parser.add_argument("--dtype", default="float32")  # float32 | bfloat16 | float16
parser.add_argument("--device", default="cpu")  # cuda: the GPU check of bench/gpu.py
parser.add_argument("--iters", type=int, default=8)
args = parser.parse_args()

torch.manual_seed(1337)
device = args.device
device_type = "cuda" if "cuda" in device else "cpu"
ptdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
    args.dtype
]
ctx = nullcontext() if args.dtype == "float32" else torch.amp.autocast(device_type, ptdtype)
block_size, vocab_size, batch_size, n_embd = 16, 48, 4, 32
gradient_accumulation_steps, grad_clip, learning_rate = 2, 1.0, 6e-3


class CausalSelfAttention(nn.Module):
    def __init__(self, n_head=2):
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)
        self.n_head = n_head

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention()
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd)
        )

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(vocab_size, n_embd),
                wpe=nn.Embedding(block_size, n_embd),
                h=nn.ModuleList([Block() for _ in range(2)]),
                ln_f=nn.LayerNorm(n_embd),
            )
        )
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying

    def forward(self, idx, targets=None):
        pos = torch.arange(0, idx.shape[1], dtype=torch.long, device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        if targets is not None:
            logits = self.lm_head(x)
            loss = F.cross_entropy(
                logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1
            )
        else:
            logits, loss = self.lm_head(x[:, [-1], :]), None
        return logits, loss


data = torch.randint(0, vocab_size, (4096,), generator=torch.Generator().manual_seed(0))


def get_batch(split):
    ix = torch.randint(len(data) - block_size, (batch_size,))
    x = torch.stack([data[i : i + block_size] for i in ix])
    y = torch.stack([data[i + 1 : i + 1 + block_size] for i in ix])
    return x.to(device), y.to(device)


@torch.no_grad()
def estimate_loss():
    model.eval()
    losses = torch.zeros(2)
    for k in range(2):
        X, Y = get_batch("val")
        with ctx:
            _, loss = model(X, Y)
        losses[k] = loss.item()
    model.train()
    return losses.mean()


def get_lr(it, warmup=2, decay=8, min_lr=6e-4):
    if it < warmup:
        return learning_rate * (it + 1) / (warmup + 1)
    ratio = min(1.0, (it - warmup) / (decay - warmup))
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (learning_rate - min_lr)


model = GPT()
scaler = torch.amp.GradScaler("cpu", enabled=(args.dtype == "float16"))
optimizer = torch.optim.AdamW(
    model.parameters(), lr=learning_rate, betas=(0.9, 0.95), weight_decay=0.1
)
raw_model = model
if args.compile:
    model = torch.compile(model, backend=args.compile)

trace = Trace()
trace.set("names", [n for n, _ in raw_model.named_parameters()])
X, Y = get_batch("train")
for it in range(args.iters):
    lr = get_lr(it)
    for param_group in optimizer.param_groups:
        param_group["lr"] = lr
    if it % 4 == 0:
        print(f"step {it}: val loss {estimate_loss():.4f}")
    step_loss = 0.0
    for micro_step in range(gradient_accumulation_steps):
        with ctx:
            logits, loss = model(X, Y)
            loss = loss / gradient_accumulation_steps
        X, Y = get_batch("train")
        scaler.scale(loss).backward()
        step_loss += loss.item()
    scaler.unscale_(optimizer)
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    trace.add("loss", step_loss)
    trace.add("grad_norm", norm.item())
    print(f"iter {it}: loss {step_loss:.4f}")

checkpoint = {"model": raw_model.state_dict(), "optimizer": optimizer.state_dict(), "iter_num": it}
with tempfile.TemporaryDirectory() as tmp:
    torch.save(checkpoint, os.path.join(tmp, "ckpt.pt"))
trace.save({k: v.cpu() for k, v in raw_model.state_dict().items()})
