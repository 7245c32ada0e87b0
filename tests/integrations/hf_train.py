"""A small Hugging Face ``Trainer.train``: a config-built GPT-2 (no downloads), gradient
accumulation, clipping, a log every step and an evaluation every 3 steps; ``--callback``
adds ``GradlensCallback`` (run it under ``gradlens watch`` without it)."""

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

sys.path.insert(0, str(Path(__file__).parents[1] / "clients"))
from _trace import Trace

parser = argparse.ArgumentParser()
parser.add_argument("--out")
parser.add_argument("--callback", action="store_true")
parser.add_argument("--runs-dir")
parser.add_argument("--fail-at", type=int, default=-1)
args = parser.parse_args()
torch.manual_seed(0)
config = GPT2Config(
    n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=32, bos_token_id=0, eos_token_id=0
)
model = GPT2LMHeadModel(config)
g = torch.Generator().manual_seed(0)
tokens = torch.randint(0, 64, (72, 16), generator=g)
train = [{"input_ids": t, "labels": t} for t in tokens[:64]]
held_out = [{"input_ids": t, "labels": t} for t in tokens[64:]]
trace = Trace()
trace.set("names", [n for n, _ in model.named_parameters()])


class Keep(TrainerCallback):
    """What the Trainer logged, as the script sees it."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "grad_norm", "eval_loss"):
            if key in logs:
                trace.add(key, logs[key])
                trace.add(f"{key}_step", state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == args_fail_at:
            raise RuntimeError("the script fails")


args_fail_at = args.fail_at
callbacks = [Keep()]
if args.callback:
    from gradlens.integrations.transformers import GradlensCallback

    callbacks.append(GradlensCallback(runs_dir=args.runs_dir, name="client"))

with tempfile.TemporaryDirectory() as tmp:
    training_args = TrainingArguments(
        output_dir=tmp,
        max_steps=6,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        gradient_accumulation_steps=2,
        learning_rate=1e-3,
        max_grad_norm=1.0,
        logging_steps=1,
        eval_strategy="steps",
        eval_steps=3,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=held_out,
        callbacks=callbacks,
    )
    result = trainer.train()
print(f"trained {result.global_step} steps")
trace.save(model.state_dict())
