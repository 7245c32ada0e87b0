"""Trains 30 steps; when gradlens then writes the rows (while its main thread waits for the
writer thread), Ctrl-C is pressed argv[1] times, as a user pressing Ctrl-C right after the last
step does. The writer is slowed down so the presses land while the main thread waits."""

import signal
import sys
import threading
import time

import torch
from torch import nn

import gradlens.store.writer as writer

presses = int(sys.argv[1])
model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
for _ in range(30):
    opt.zero_grad()
    model(torch.randn(8, 4)).pow(2).mean().backward()
    opt.step()

write_segment = writer.write_segment
pressed = False


def ctrl_c_while_writing(*args, **kwargs):
    global pressed
    if not pressed:
        pressed = True
        main = threading.main_thread().ident
        assert main is not None
        for _ in range(presses):
            signal.pthread_kill(main, signal.SIGINT)
            time.sleep(0.2)  # each press handled before the next (they would merge)
    return write_segment(*args, **kwargs)


writer.write_segment = ctrl_c_while_writing
