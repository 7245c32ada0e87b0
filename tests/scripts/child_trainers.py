"""Training in child processes, as pytorch/examples' mnist_hogwild and the DDP tutorial's
``mp.spawn`` do: the parent builds the model (or nothing) and starts workers that train.

    child_trainers.py hogwild fork|spawn [--lens DIR] [--fail]
        two workers train a shared model 6 steps; --fail: worker 1 raises after 3 steps
    child_trainers.py ddp OUT
        torch.multiprocessing.spawn of 2 DDP ranks (gloo), 5 steps; each rank writes
        OUT/rank<r>.json with its losses and gradient norms as it computes them
    child_trainers.py os_fork
        the parent trains, a raw os.fork() child trains too and exits normally

``--lens DIR``: each worker opens its own ``gradlens.Lens`` (run ``worker-<rank>`` in DIR).
"""

import json
import os
import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn


def train(rank, model, steps, lens_dir, fail=False):
    torch.manual_seed(rank)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.5)

    def loop():
        for step in range(steps):
            if fail and rank == 1 and step == 3:
                raise RuntimeError("worker 1 fails at step 3")
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


def produce(queue):
    queue.put(torch.randn(4).sum().item())


def ddp_worker(rank, world, port, out):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(
        nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3))
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(100 + rank)
    trace = {"loss": [], "grad_norm": []}
    for _ in range(5):
        x, y = torch.randn(16, 10, generator=g), torch.randint(0, 3, (16,), generator=g)
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        grads = [p.grad.double().norm() for p in model.parameters()]
        trace["loss"].append(loss.item())
        trace["grad_norm"].append(float(torch.stack(grads).norm()))
        opt.step()
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(trace, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    mode = sys.argv[1]
    lens_dir = sys.argv[sys.argv.index("--lens") + 1] if "--lens" in sys.argv else None
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3))
    if mode == "hogwild":
        model.share_memory()
        ctx = mp.get_context(sys.argv[2])
        fail = "--fail" in sys.argv
        workers = [ctx.Process(target=train, args=(r, model, 6, lens_dir, fail)) for r in range(2)]
        queue = ctx.Queue()
        if sys.argv[2] == "spawn":  # and one that only produces data: it leaves no run
            workers.append(ctx.Process(target=produce, args=(queue,)))
        for w in workers:
            w.start()
        if len(workers) > 2:
            queue.get(timeout=120)
        for w in workers:
            w.join()
        print("exit codes", [w.exitcode for w in workers][:2])
    elif mode == "ddp":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.spawn(ddp_worker, args=(2, port, sys.argv[2]), nprocs=2, join=True)
        print("ddp done")
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
