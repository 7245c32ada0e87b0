"""Facts about the run for ``meta.json``: where and with what it ran, the optimizers' settings."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from typing import Any

import torch
from torch import Tensor

from gradlens._version import __version__
from gradlens.store.meta import process_start

__all__ = ["describe_device", "environment", "git_sha", "hyperparameters", "learning_rate"]


def environment(name: str, command: str, argv: list[str], start_time: float) -> dict[str, Any]:
    """The part of the initial ``meta.json`` that describes the process and the machine."""
    return {
        "name": name,
        "command": command,
        "argv": argv,
        "cwd": os.getcwd(),
        "status": "running",
        "start_time": start_time,
        "end_time": None,
        "pid": os.getpid(),
        "pid_start": process_start(os.getpid()),
        "host": socket.gethostname(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "gradlens": __version__,
        },
        "git_sha": git_sha(),
    }


def hyperparameters(optimizer: torch.optim.Optimizer, serial: int) -> dict[str, Any]:
    """The optimizer's class and the first group's settings, as JSON values (Adafactor's
    ``eps`` is ``(None, 1e-3)``: ``[null, 0.001]``); a setting of another kind is left out."""
    out: dict[str, Any] = {"optimizer": type(optimizer).__name__, "serial": serial}
    group = optimizer.param_groups[0] if optimizer.param_groups else {}
    for key in ("lr", "betas", "momentum", "weight_decay", "eps", "nesterov"):
        value = group.get(key)
        items = value if isinstance(value, tuple | list) else [value]
        numbers = [_number(v) for v in items]
        if value is not None and all(v is not _UNKNOWN for v in numbers):
            out[key] = numbers if isinstance(value, tuple | list) else numbers[0]
    out["param_groups"] = len(optimizer.param_groups)
    return out


_UNKNOWN = object()


def _number(value: Any) -> Any:
    """A JSON number, bool or None for ``value``; ``_UNKNOWN`` for anything else."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, Tensor) and value.numel() == 1:
        return float(value)
    return _UNKNOWN


def learning_rate(value: Any) -> float | Tensor:
    """The learning rate now: a CUDA tensor is copied asynchronously (read on the writer
    thread); a CPU tensor is read at once (schedulers update tensor lrs in place)."""
    if isinstance(value, Tensor):
        if value.device.type == "cpu":
            return float(value)
        return value.detach().to("cpu", non_blocking=True)
    return float(value) if value is not None else float("nan")


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=2, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None
