"""DataLoader worker processes, the way most real scripts load data: a ``Dataset`` and a
``collate_fn`` defined in the script (pickled by reference to ``__main__`` under ``spawn`` and
``forkserver``, the defaults on macOS and, from Python 3.14, on Linux), ``num_workers=2``,
``persistent_workers``, a ``worker_init_fn`` seeding each worker, the training loop in
``main()`` behind ``if __name__ == "__main__"``, and a validation loader with its own workers
under ``torch.no_grad`` once per epoch."""

import argparse

import torch
import torch.nn.functional as F
from _trace import Trace, grad_norm
from torch.utils.data import DataLoader, Dataset


class Blobs(Dataset):
    """Two Gaussian blobs, made from a fixed seed (no files)."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.y = torch.randint(0, 2, (n,), generator=g)
        self.x = torch.randn(n, 8, generator=g) + self.y[:, None] * 1.5

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


def collate(batch):
    xs, ys = zip(*batch, strict=True)
    return torch.stack(xs), torch.stack(ys)


def seed_worker(worker_id: int) -> None:
    torch.manual_seed(torch.initial_seed() % 2**32 + worker_id)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out")
    parser.add_argument("--context", default="spawn")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loader_args = {
        "num_workers": 2,
        "collate_fn": collate,
        "multiprocessing_context": args.context,
        "persistent_workers": True,
        "worker_init_fn": seed_worker,
    }
    train = DataLoader(Blobs(192, 1), batch_size=32, shuffle=True, **loader_args)
    valid = DataLoader(Blobs(64, 2), batch_size=32, **loader_args)
    trace = Trace()
    trace.set("names", [n for n, _ in model.named_parameters()])
    for epoch in range(args.epochs):
        model.train()
        for x, y in train:
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            trace.add("loss", loss.item())
            trace.add("grad_norm", grad_norm(model.parameters()))
            opt.step()
        model.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for x, y in valid:
                total += F.cross_entropy(model(x), y, reduction="sum").item()
                count += len(y)
        trace.add("eval_loss", total / count)
        print(f"epoch {epoch} val {total / count:.6f}")
    trace.save(model.state_dict())


if __name__ == "__main__":
    main()
