"""A small Lightning ``Trainer.fit`` (closure steps, clipping, validation every 4 steps, a
LR scheduler, two epochs) with ``self.log`` per step, per epoch, in validation and in the
module's ``on_train_batch_end``; ``--callback`` adds ``GradlensCallback`` (run it under
``gradlens watch`` without it)."""

import argparse
import sys
import warnings
from pathlib import Path

import lightning as L
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).parents[1] / "clients"))
from _trace import Trace, grad_norm

warnings.filterwarnings("ignore")  # Lightning's advice on workers and loggers
parser = argparse.ArgumentParser()
parser.add_argument("--out")
parser.add_argument("--callback", action="store_true")
parser.add_argument("--runs-dir")
parser.add_argument("--fail-at", type=int, default=-1)
args = parser.parse_args()
L.seed_everything(0, verbose=False)
trace = Trace()


class Classifier(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        if self.global_step == args.fail_at:
            raise RuntimeError("the script fails")
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        self.log("epoch_loss", loss, on_step=False, on_epoch=True)
        trace.add("loss", loss.item())
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.log("seen", float(self.global_step))  # after GradlensCallback's hook

    def on_before_optimizer_step(self, optimizer):
        trace.add("grad_norm", grad_norm(self.parameters()))  # before the Trainer clips

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def on_validation_epoch_end(self):
        if not self.trainer.sanity_checking:
            trace.add("val_loss", self.trainer.callback_metrics["val_loss"])
            trace.add("val_step", self.global_step)

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.5, momentum=0.9)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5)]


g = torch.Generator().manual_seed(1)
x, y = torch.randn(80, 10, generator=g), torch.randint(0, 3, (80,), generator=g)
train = DataLoader(TensorDataset(x[:48], y[:48]), batch_size=8)
val = DataLoader(TensorDataset(x[48:], y[48:]), batch_size=16)
module = Classifier()
trace.set("names", [n for n, _ in module.named_parameters()])
callbacks = []
if args.callback:
    from gradlens.integrations.lightning import GradlensCallback

    callbacks.append(GradlensCallback(runs_dir=args.runs_dir, name="client"))
trainer = L.Trainer(
    max_steps=10,
    accelerator="cpu",
    devices=1,
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
    enable_model_summary=False,
    gradient_clip_val=0.5,
    val_check_interval=4,
    limit_val_batches=1,
    deterministic=True,
    callbacks=callbacks,
)
trainer.fit(module, train, val)
print(f"global step {trainer.global_step}")
trace.save(module.state_dict())
