"""A Hugging Face ``accelerate`` training loop in the style of transformers'
``run_clm_no_trainer.py``: a tiny config-built GPT-2 (no downloads), weight decay off for
biases and LayerNorm weights (two parameter groups), ``accelerator.prepare``, gradient
accumulation with ``accelerator.accumulate`` (the wrapped optimizer skips the steps between),
``accelerator.backward`` (which divides the loss by the accumulation steps),
``accelerator.clip_grad_norm_`` on the steps that sync, a linear schedule, and an evaluation
per epoch under ``torch.no_grad`` with ``gather_for_metrics`` and a perplexity."""

import argparse
import math

import torch
from _trace import Trace
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from transformers import GPT2Config, GPT2LMHeadModel, get_scheduler

parser = argparse.ArgumentParser()
parser.add_argument("--out")
parser.add_argument("--epochs", type=int, default=2)
parser.add_argument("--accumulation", type=int, default=2)
args = parser.parse_args()

accelerator = Accelerator(gradient_accumulation_steps=args.accumulation, cpu=True)
set_seed(0)
config = GPT2Config(
    n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=32, bos_token_id=0, eos_token_id=0
)
model = GPT2LMHeadModel(config)
g = torch.Generator().manual_seed(0)
tokens = torch.randint(0, 64, (48, 16), generator=g)
train = [{"input_ids": t, "labels": t} for t in tokens[:40]]
valid = [{"input_ids": t, "labels": t} for t in tokens[40:]]
train_loader = DataLoader(train, batch_size=4, shuffle=True)
eval_loader = DataLoader(valid, batch_size=4)

no_decay = ["bias", "ln_1.weight", "ln_2.weight", "ln_f.weight"]
groups = [
    {
        "params": [p for n, p in model.named_parameters() if not any(k in n for k in no_decay)],
        "weight_decay": 0.01,
    },
    {
        "params": [p for n, p in model.named_parameters() if any(k in n for k in no_decay)],
        "weight_decay": 0.0,
    },
]
optimizer = torch.optim.AdamW(groups, lr=1e-3)
steps_per_epoch = math.ceil(len(train_loader) / args.accumulation)
lr_scheduler = get_scheduler(
    "linear",
    optimizer=optimizer,
    num_warmup_steps=2,
    num_training_steps=args.epochs * steps_per_epoch,
)
model, optimizer, train_loader, eval_loader, lr_scheduler = accelerator.prepare(
    model, optimizer, train_loader, eval_loader, lr_scheduler
)
trace = Trace()
trace.set("names", [n for n, _ in model.named_parameters()])

completed = 0
for epoch in range(args.epochs):
    model.train()
    micro: list[float] = []
    for batch in train_loader:
        with accelerator.accumulate(model):
            outputs = model(**batch)
            loss = outputs.loss
            micro.append(loss.item())
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                norm = accelerator.clip_grad_norm_(model.parameters(), 1.0)
                trace.add("grad_norm", norm)
                trace.add("loss", sum(micro) / args.accumulation)
                micro = []
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad()
        if accelerator.sync_gradients:
            completed += 1
    model.eval()
    losses = []
    for batch in eval_loader:
        with torch.no_grad():
            outputs = model(**batch)
        losses.append(accelerator.gather_for_metrics(outputs.loss.repeat(len(batch["labels"]))))
    eval_loss = torch.cat(losses).mean()
    trace.add("eval_loss", eval_loss)
    print(f"epoch {epoch}: perplexity {math.exp(eval_loss):.4f} eval_loss {eval_loss:.6f}")
print(f"trained {completed} optimizer steps")
trace.save(accelerator.unwrap_model(model).state_dict())
