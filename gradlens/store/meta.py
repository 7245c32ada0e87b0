"""``meta.json``: what a run is (command, versions, device, config) and how it ended.

Written atomically at start and at the end. A run whose file still says ``running`` but whose
process is gone was never finalized: readers report it as ``crashed``.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from pathlib import Path
from typing import Any

from gradlens.errors import ConfigError

__all__ = [
    "STATUSES",
    "create_run_dir",
    "process_start",
    "read_meta",
    "resolved_status",
    "run_name_for",
    "update_meta",
    "valid_run_name",
    "write_meta",
]

STATUSES = ("running", "finished", "failed", "interrupted", "crashed")
# A run on another host counts as crashed when nothing was written for this long.
STALE_AFTER_S = 600.0


def valid_run_name(name: str) -> str:
    """``name`` if it is a valid run name, else ``ConfigError`` saying what is allowed."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", name):
        raise ConfigError(
            f"run name {name!r}: start with a letter or digit, then letters, digits, . _ + -"
        )
    return name


def run_name_for(text: str) -> str:
    """A valid run name made from ``text`` (e.g. a script's file name)."""
    name = re.sub(r"[^A-Za-z0-9._+-]+", "-", text).lstrip("._+-")
    return name or "run"


def create_run_dir(runs_dir: Path, name: str) -> Path:
    """Create a fresh folder for run ``name`` under ``runs_dir`` (``name-2``… if taken)."""
    valid_run_name(name)
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
        for n in range(1, 10_000):
            path = runs_dir / (name if n == 1 else f"{name}-{n}")
            try:
                path.mkdir()
                return path
            except FileExistsError:
                continue
    except OSError as exc:
        raise ConfigError(f"cannot create a run in {runs_dir}: {exc.strerror or exc}") from None
    raise ConfigError(f"too many runs named {name!r} in {runs_dir}")


def write_meta(run_dir: Path, meta: dict[str, Any]) -> None:
    """Write ``meta.json`` atomically."""
    tmp = run_dir / ".meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2, default=str))
    os.replace(tmp, run_dir / "meta.json")


def read_meta(run_dir: Path) -> dict[str, Any]:
    """Read ``meta.json``; raises ``FileNotFoundError`` or ``ValueError``."""
    data = json.loads((run_dir / "meta.json").read_text())
    if not isinstance(data, dict):
        raise ValueError("meta.json does not hold an object")
    return data


def update_meta(run_dir: Path, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into ``meta.json`` and return the result."""
    meta = read_meta(run_dir)
    meta.update(fields)
    write_meta(run_dir, meta)
    return meta


def resolved_status(meta: dict[str, Any], run_dir: Path) -> str:
    """The status to show: ``running`` only while the writing process is alive."""
    status = str(meta.get("status", "crashed"))
    if status != "running":
        return status if status in STATUSES else "crashed"
    pid, host = meta.get("pid"), meta.get("host")
    if host == socket.gethostname() and isinstance(pid, int):
        return "running" if _alive(pid, meta.get("pid_start")) else "crashed"
    newest = max((p.stat().st_mtime for p in run_dir.rglob("*") if p.is_file()), default=0.0)
    return "running" if time.time() - newest < STALE_AFTER_S else "crashed"


def process_start(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks (Linux), to tell a reused pid apart."""
    fields = _proc_stat(pid)
    return int(fields[19]) if fields else None


def _proc_stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _alive(pid: int, started: object) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    fields = _proc_stat(pid)
    if fields is None:  # no /proc: trust kill(0)
        return True
    if fields[0] == "Z":  # killed, not yet reaped by its parent
        return False
    return not isinstance(started, int) or int(fields[19]) == started
