"""The run folder of a multi-process run (torchrun): one folder, created by rank 0.

The other ranks read its name from a pointer file keyed by the torchrun run id, so no
collective is needed before the script initialises its process group.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from gradlens.store.meta import create_run_dir

__all__ = ["remove_pointer", "shared_run_dir"]


def _pointer(runs_dir: Path, name: str) -> Path:
    run_id = os.environ.get("TORCHELASTIC_RUN_ID") or os.environ.get("MASTER_PORT", "local")
    return runs_dir / f".gradlens-{re.sub(r'[^A-Za-z0-9_.-]', '_', run_id)}-{name}"


def shared_run_dir(runs_dir: Path, name: str, rank: int, timeout: float = 300.0) -> Path:
    """Rank 0 creates the run folder; other ranks wait for its name in a pointer file."""
    pointer = _pointer(runs_dir, name)
    if rank == 0:
        run_dir = create_run_dir(runs_dir, name)
        tmp = pointer.with_name(pointer.name + ".tmp")
        tmp.write_text(run_dir.name)
        os.replace(tmp, pointer)
        return run_dir
    deadline = time.monotonic() + timeout
    while not pointer.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"rank {rank}: rank 0 created no run folder in {timeout:.0f} s")
        time.sleep(0.05)
    return runs_dir / pointer.read_text().strip()


def remove_pointer(runs_dir: Path, run_name: str) -> None:
    """Rank 0, at the end: the pointer file is no longer needed (the folder name may differ
    from the requested one by a ``-2`` suffix, so look for the file that names it)."""
    for path in runs_dir.glob(".gradlens-*"):
        try:
            if path.read_text().strip() == run_name:
                path.unlink(missing_ok=True)
        except OSError:
            continue
