"""Workers the watched script starts with 'spawn', each recorded as its own run.

``torch.multiprocessing.spawn`` (the DDP tutorial, pytorch/examples' ImageNet) and
``mp.Process`` of the spawn context start fresh interpreters that gradlens is not in. While
``gradlens watch`` records, the parent's Lens has each such child run :func:`bootstrap` first
(``instrument.processes.worker_command``, put into the child's ``-c`` program by
``instrument.interception``); DataLoader workers are left alone. In the child a Lens with the
parent's options records run ``<run>-w<k>`` (k: the order the workers were started; for
``mp.spawn`` the process index), starting before multiprocessing unpickles the worker and
closing when it returns: ``finished``, or ``failed`` with its exit code. A worker killed
outright keeps what it had flushed, as any run does. If the bootstrap fails it says so in one
line and the worker runs unrecorded.

Each worker is a single-process run (no collectives of gradlens's own): under DDP every
worker's gradient norms are those of the averaged gradient and its loss is its own batch's.
"""

from __future__ import annotations

import json
import multiprocessing.spawn
import os
import sys
from typing import Any

from gradlens.capture.spikes import SpikeConfig
from gradlens.instrument.guard import reason_of

__all__ = ["bootstrap"]


def bootstrap(config_json: str) -> None:
    """In a spawned child, before multiprocessing's ``spawn_main``: record this worker."""
    try:
        _start(json.loads(config_json))
    except Exception as exc:  # the worker is the script's: it runs unrecorded
        print(f"gradlens: worker not recorded: {reason_of(exc)}", file=sys.stderr)


def _start(config: dict[str, Any]) -> None:
    if os.environ.get("WORLD_SIZE", "1") != "1":
        raise RuntimeError("WORLD_SIZE is set: the worker's rank is unknown before it starts")
    from gradlens.lens import Lens

    options = dict(config["options"])
    options["spikes"] = SpikeConfig(**options["spikes"])
    lens = Lens(
        runs_dir=config["runs_dir"],
        name=config["name"],
        command=config["command"],
        argv=config["argv"],
        **options,
    )
    lens.start()
    run_worker = multiprocessing.spawn._main

    def main(fd: int, parent_sentinel: Any) -> int:
        code = run_worker(fd, parent_sentinel)
        failed = code not in (0, None)
        lens.close(
            "failed" if failed else "finished",
            exit_code=code,
            error=f"worker exit code {code}" if failed else None,
        )
        return int(code or 0)

    multiprocessing.spawn._main = main
