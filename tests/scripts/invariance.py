"""Seeded CPU training that touches everything gradlens observes: a spawn DataLoader with
workers, dropout (global RNG), BatchNorm, Adam with weight decay, gradient accumulation, a
scheduler. Saves the final parameters and buffers to argv[1]."""

import sys

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset


class Blobs(Dataset):
    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, 12, generator=g)
        self.y = (self.x[:, :3].sum(1) > 0).long()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def main() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(12, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 2)
    )
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.5)
    workers = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    loader = DataLoader(
        Blobs(512),
        batch_size=32,
        shuffle=True,
        num_workers=workers,
        multiprocessing_context="spawn" if workers else None,
        generator=torch.Generator().manual_seed(2),
    )
    for _epoch in range(2):
        for i, (x, y) in enumerate(loader):
            loss = F.cross_entropy(model(x), y) / 2
            loss.backward()
            if i % 2 == 1:
                opt.step()
                opt.zero_grad()
                sched.step()
    torch.save(model.state_dict(), sys.argv[1])
    print("saved")


if __name__ == "__main__":
    main()
