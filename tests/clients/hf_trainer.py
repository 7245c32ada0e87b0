"""A minimal Hugging Face ``Trainer`` run: a tiny config-built GPT-2 (no downloads), random
tokens, gradient accumulation, clipping at 1.0, gradient checkpointing, and the Trainer's own
log of loss and grad_norm per step (kept by a callback)."""

import argparse
import tempfile

import torch
from _trace import Trace
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

parser = argparse.ArgumentParser()
parser.add_argument("--out")
parser.add_argument("--steps", type=int, default=6)
args = parser.parse_args()
torch.manual_seed(0)
config = GPT2Config(
    n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=32, bos_token_id=0, eos_token_id=0
)
model = GPT2LMHeadModel(config)
g = torch.Generator().manual_seed(0)
tokens = torch.randint(0, 64, (64, 16), generator=g)
dataset = [{"input_ids": t, "labels": t} for t in tokens]
trace = Trace()
trace.set("names", [n for n, _ in model.named_parameters()])


class Keep(TrainerCallback):
    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            trace.add("loss", logs["loss"])
            trace.add("grad_norm", logs["grad_norm"])


with tempfile.TemporaryDirectory() as tmp:
    training_args = TrainingArguments(
        output_dir=tmp,
        max_steps=args.steps,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        gradient_checkpointing=True,
        learning_rate=1e-3,
        max_grad_norm=1.0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=dataset, callbacks=[Keep()])
    result = trainer.train()
print(f"trained {result.global_step} steps")
trace.save(model.state_dict())
