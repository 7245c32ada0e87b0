"""Workers the watched script starts with 'spawn', each recorded as its own run.

``torch.multiprocessing.spawn`` (the DDP tutorial, pytorch/examples' ImageNet) and
``mp.Process`` of the spawn context start fresh interpreters that gradlens is not in. While
``gradlens watch`` records, the parent's Lens has each such child run :func:`bootstrap` first
(``instrument.processes.worker_command``, put into the child's ``-c`` program by
``instrument.interception``); DataLoader workers are left alone. In the child a Lens with the
parent's options records run ``<run>-w<k>`` (k: the order the workers were started; for
``mp.spawn`` the process index), starting before multiprocessing unpickles the worker and
closing when it returns: ``finished``, or ``failed`` with its exit code. The Lens starts once
the script's module is re-imported in the child, and only if that imported torch (an
environment or data worker without torch never imports it for gradlens); a worker that took no
optimizer step and succeeded leaves no run. A worker killed outright keeps what it had
flushed, as any run does. If the bootstrap fails it says so in one line and the worker runs
unrecorded.

Each worker is a single-process run (no collectives of gradlens's own): under DDP every
worker's gradient norms are those of the averaged gradient and its loss is its own batch's.
"""

from __future__ import annotations

import json
import multiprocessing.spawn
import os
import shutil
import sys
from typing import Any

from gradlens.capture.spikes import SpikeConfig
from gradlens.instrument.guard import reason_of

__all__ = ["bootstrap"]


def bootstrap(config_json: str) -> None:
    """In a spawned child, before multiprocessing's ``spawn_main``: record this worker once
    the script's module is imported, if it imported torch (an environment or data worker that
    does not never pays for torch)."""
    try:
        config = json.loads(config_json)
        _record_after_prepare(config)
    except Exception as exc:  # the worker is the script's: it runs unrecorded
        print(f"gradlens: worker not recorded: {reason_of(exc)}", file=sys.stderr)


def _record_after_prepare(config: dict[str, Any]) -> None:
    prepare, run_worker = multiprocessing.spawn.prepare, multiprocessing.spawn._main
    lenses: list[Any] = []

    def prepared(data: Any) -> None:
        prepare(data)  # the script re-imported as __mp_main__
        if "torch" in sys.modules:
            try:
                lenses.append(_start(config))
            except Exception as exc:
                print(f"gradlens: worker not recorded: {reason_of(exc)}", file=sys.stderr)

    def main(fd: int, parent_sentinel: Any) -> int:
        code: int | None = 1  # the worker could not even be unpickled
        try:
            code = run_worker(fd, parent_sentinel)
        finally:
            for lens in lenses:
                _close(lens, code)
        return int(code or 0)

    multiprocessing.spawn.prepare = prepared
    multiprocessing.spawn._main = main


def _start(config: dict[str, Any]) -> Any:
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
    return lens.start()


def _close(lens: Any, code: int | None) -> None:
    """Finish the worker's run; a worker that took no step and succeeded (it loaded data,
    ran an environment) leaves no run behind."""
    failed = code not in (0, None)
    lens.close(
        "failed" if failed else "finished",
        exit_code=code,
        error=f"worker exit code {code}" if failed else None,
    )
    if lens.step == 0 and not failed and lens.run_dir is not None:
        shutil.rmtree(lens.run_dir, ignore_errors=True)
