"""``meta.json``: what a run is (command, versions, device, config) and how it ended.

Written atomically at start and at the end. A run whose file still says ``running`` but whose
process is gone was never finalized: readers report it as ``crashed``.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gradlens.errors import ConfigError, RunUnreadableError
from gradlens.store.failures import remove_quietly, storage_error, warn_storage

__all__ = [
    "STATUSES",
    "create_run_dir",
    "process_start",
    "read_meta",
    "resolved_status",
    "run_name_for",
    "update_meta",
    "valid_run_name",
    "validate_meta",
    "write_meta",
]

STATUSES = ("running", "finished", "failed", "interrupted", "crashed")
# A run on another host counts as crashed when nothing was written for this long.
STALE_AFTER_S = 600.0


def valid_run_name(name: str) -> str:
    """``name`` if it is a valid run name, else ``ConfigError`` saying what is allowed."""
    if not re.fullmatch(r"[^\W_][\w.+-]*", name) or len(name.encode()) > 200:
        raise ConfigError(
            f"run name {name!r}: start with a letter or digit, then letters, digits, . _ + - "
            "(at most 200 bytes)"
        )
    return name


def run_name_for(text: str) -> str:
    """A valid run name made from ``text`` (e.g. a script's file name; any script's letters,
    ``обучение.py`` gives ``обучение``)."""
    name = re.sub(r"[^\w.+-]+", "-", text).lstrip("._+-")[:100]
    return name or "run"


def create_run_dir(runs_dir: Path, name: str) -> Path:
    """Create a fresh folder for run ``name`` under ``runs_dir`` (``name-2``… if taken).

    The path returned is absolute: the script may ``os.chdir`` while the run is written.
    """
    valid_run_name(name)
    runs_dir = Path(runs_dir).absolute()
    if (runs_dir / "meta.json").is_file():  # a run of its own: the new one would nest in it
        raise ConfigError(f"{runs_dir} is a run, not a folder of runs: use its parent folder")
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
    """Write ``meta.json`` atomically; on failure the temporary file is removed and the
    ``OSError`` raised."""
    tmp = Path(run_dir) / ".meta.json.tmp"
    try:
        tmp.write_text(json.dumps(meta, indent=2, default=str))
        os.replace(tmp, Path(run_dir) / "meta.json")
    except BaseException:
        remove_quietly(tmp)
        raise


def read_meta(run_dir: Path) -> dict[str, Any]:
    """Read and validate ``meta.json``.

    Raises:
        FileNotFoundError: there is no ``meta.json``.
        RunUnreadableError: it cannot be read, is not JSON, or a field has the wrong type
            (the message says which, in one line).
    """
    path = Path(run_dir) / "meta.json"
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        raise RunUnreadableError(f"{path}: unreadable ({_reason(exc)})") from None
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise RunUnreadableError(f"{path}: not valid JSON ({_reason(exc)})") from None
    problem = validate_meta(data)
    if problem is not None:
        raise RunUnreadableError(f"{path}: {problem}")
    return data


def update_meta(run_dir: Path, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into ``meta.json`` and return the result.

    Never raises for a storage failure or an unreadable file: it warns once (one line) and
    returns what it would have written. The first storage failure this process met for the
    run is recorded as ``storage_error``.
    """
    try:
        meta = read_meta(run_dir)
    except (OSError, RunUnreadableError) as exc:
        warn_storage(run_dir, "cannot read meta.json", exc)
        return dict(fields)
    meta.update(fields)
    failure = storage_error(run_dir)
    if failure is not None and "storage_error" not in fields:
        meta["storage_error"] = failure
    try:
        write_meta(run_dir, meta)
    except OSError as exc:
        warn_storage(run_dir, "cannot write meta.json", exc)
    return meta


# -- validation: the one schema of meta.json ----------------------------------------------------

_EARLIEST, _LATEST = 0.0, 4_102_444_800.0  # 1970 .. 2100, in seconds since the epoch


def _text(value: Any) -> str | None:
    return None if isinstance(value, str) else "a string"


def _count(value: Any) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return None if ok else "a whole number >= 0"


def _code(value: Any) -> str | None:
    return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"


def _time(value: Any) -> str | None:
    ok = (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and _EARLIEST <= value <= _LATEST
    )
    return None if ok else "seconds since the epoch (a finite number, years 1970-2100)"


def _status(value: Any) -> str | None:
    return None if value in STATUSES else f"one of {', '.join(STATUSES)}"


def _texts(value: Any) -> str | None:
    ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    return None if ok else "a list of strings"


def _mapping(value: Any) -> str | None:
    return None if isinstance(value, dict) else "an object"


# field -> (check, may be null)
META_FIELDS: dict[str, tuple[Callable[[Any], str | None], bool]] = {
    "name": (_text, False),
    "command": (_text, True),
    "argv": (_texts, True),
    "cwd": (_text, True),
    "status": (_status, False),
    "start_time": (_time, True),
    "end_time": (_time, True),
    "pid": (_count, True),
    "pid_start": (_count, True),
    "host": (_text, True),
    "versions": (_mapping, True),
    "git_sha": (_text, True),
    "config": (_mapping, True),
    "exit_code": (_code, True),
    "error": (_text, True),
    "steps": (_count, True),
    "device": (_text, True),
    "layers": (_count, True),
    "world_size": (_count, True),
    "storage_error": (_text, True),
    "probe_scope": (_mapping, True),
}


def validate_meta(data: Any) -> str | None:
    """Why ``data`` is not a valid ``meta.json`` (one line), or None if it is.

    Fields may be missing; a field that is there must have its type (``META_FIELDS``).
    Fields gradlens does not know are kept as they are.
    """
    if not isinstance(data, dict):
        return "does not hold a JSON object"
    for field, (check, nullable) in META_FIELDS.items():
        if field not in data or (nullable and data[field] is None):
            continue
        expected = check(data[field])
        if expected is not None:
            shown = repr(data[field])
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            return f"{field} must be {expected}, got {shown}"
    return None


def _reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."


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
