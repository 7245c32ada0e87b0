"""A minimal Lightning ``Trainer.fit``: automatic optimization (the optimizer step is given a
closure), gradient clipping by the Trainer, a validation loop, a LR scheduler."""

import argparse
import warnings

import lightning as L
import torch
import torch.nn as nn
import torch.nn.functional as F
from _trace import Trace, grad_norm
from torch.utils.data import DataLoader, TensorDataset

warnings.filterwarnings("ignore")  # Lightning's advice on workers and loggers
parser = argparse.ArgumentParser()
parser.add_argument("--out")
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
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        trace.add("loss", loss.item())
        return loss

    def on_before_optimizer_step(self, optimizer):
        trace.add("grad_norm", grad_norm(self.parameters()))  # before the Trainer clips

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.5, momentum=0.9)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5)]


g = torch.Generator().manual_seed(1)
x, y = torch.randn(96, 10, generator=g), torch.randint(0, 3, (96,), generator=g)
train = DataLoader(TensorDataset(x[:64], y[:64]), batch_size=8)
val = DataLoader(TensorDataset(x[64:], y[64:]), batch_size=16)
module = Classifier()
trace.set("names", [n for n, _ in module.named_parameters()])
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
)
trainer.fit(module, train, val)
print(f"global step {trainer.global_step}")
trace.save(module.state_dict())
