"""Training in child processes, as pytorch/examples' mnist_hogwild and the DDP tutorial's
``mp.spawn`` do: the parent builds the model and starts workers that train it.

    child_trainers.py hogwild fork|spawn [--lens DIR]   # workers train a shared model
    child_trainers.py os_fork                           # parent trains, a raw os.fork() child
                                                        # trains too and exits normally

``--lens DIR``: each worker opens its own ``gradlens.Lens`` (run ``worker-<rank>`` in DIR).
"""

import os
import sys

import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn


def train(rank, model, steps, lens_dir):
    torch.manual_seed(rank)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.5)

    def loop():
        for _ in range(steps):
            x, y = torch.randn(16, 10), torch.randint(0, 3, (16,))
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()

    if lens_dir:
        import gradlens

        with gradlens.Lens(model, opt, runs_dir=lens_dir, name=f"worker-{rank}"):
            loop()
    else:
        loop()


if __name__ == "__main__":
    mode = sys.argv[1]
    lens_dir = sys.argv[sys.argv.index("--lens") + 1] if "--lens" in sys.argv else None
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3))
    if mode == "hogwild":
        model.share_memory()
        ctx = mp.get_context(sys.argv[2])
        workers = [ctx.Process(target=train, args=(r, model, 6, lens_dir)) for r in range(2)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        print("exit codes", [w.exitcode for w in workers])
    else:  # os_fork: the parent's run holds the parent's 4 steps only
        torch.set_num_threads(1)  # an OpenMP pool used before fork() hangs the child's ops
        train(0, model, 4, None)
        pid = os.fork()
        if pid == 0:
            train(1, model, 3, None)
            sys.exit(0)  # a normal exit: atexit handlers run in the child
        _, status = os.waitpid(pid, 0)
        train(2, model, 4, None)
        print("child exit", os.waitstatus_to_exitcode(status))
