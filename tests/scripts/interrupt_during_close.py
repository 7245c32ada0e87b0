"""Trains 30 steps; when gradlens's writer thread then takes the last rows (while the main
thread waits for it to finish), Ctrl-C is pressed argv[1] times, as a user pressing Ctrl-C right
after the last step does. The writer is slowed down so the presses land while the main thread
waits."""

import signal
import sys
import threading
import time

import numpy as np
import torch
from torch import nn

import gradlens.capture.recorder as recorder
import gradlens.instrument.signals as signals
import gradlens.store.writer as writer

_init = recorder.StepRecorder.__init__


def _flush_at_close_only(self, *args, **kwargs):
    kwargs["flush_secs"] = 1e9  # a loaded machine must not flush the last rows mid-training
    _init(self, *args, **kwargs)


recorder.StepRecorder.__init__ = _flush_at_close_only

presses = int(sys.argv[1])
model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
for _ in range(30):
    opt.zero_grad()
    model(torch.randn(8, 4)).pow(2).mean().backward()
    opt.step()

to_arrow = writer.to_arrow
pressed = False


def ctrl_c_while_writing(table, columns):
    global pressed
    last = table == "scalars" and int(np.asarray(columns["step"]).max()) == 29
    if last and not pressed:  # the rows flushed at close (--every 50 > 30 steps)
        pressed = True
        main = threading.main_thread().ident
        assert main is not None
        for _ in range(presses):
            held = signals._active[0] if signals._active else None
            seen = len(held.received) if held is not None else 0
            signal.pthread_kill(main, signal.SIGINT)
            # each press handled before the next (they would merge): wait for the handler,
            # however slowly a loaded machine schedules the main thread
            deadline = time.monotonic() + 10
            while held is not None and len(held.received) == seen:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.01)
            time.sleep(0.05)
    return to_arrow(table, columns)


writer.to_arrow = ctrl_c_while_writing
