"""Where a run goes: its folder, ``meta.json``, the background writer and the status line.

In a multi-process run every rank writes its own rows into one folder made by rank 0; only
rank 0 writes ``meta.json``, the run-wide tables and the lines on stderr.
"""

from __future__ import annotations

import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from gradlens.errors import ConfigError
from gradlens.instrument.distributed import DistInfo
from gradlens.instrument.live import LiveStats, StatusLine
from gradlens.instrument.signals import exit_code_for
from gradlens.store import RunWriter, create_run_dir, update_meta, write_meta
from gradlens.store.shared import remove_pointer, shared_run_dir

__all__ = ["RunOutput"]


class RunOutput:
    """The run folder of one recording and what writes into it."""

    def __init__(self, runs_dir: Path, name: str, dist: DistInfo, status: str) -> None:
        self.runs_dir, self.name, self.dist = runs_dir, name, dist
        self.status_mode = status if dist.main else "off"
        self.run_dir: Path | None = None
        self.writer: RunWriter | None = None
        self.status: StatusLine | None = None
        self.stats = LiveStats()  # the latest numbers (status line)
        self._said: set[str] = set()

    def open(self, meta: dict[str, Any]) -> RunWriter:
        """Create the folder (``name-2``… if taken), write ``meta.json``, start the writer."""
        if self.dist.active:  # one run folder for all ranks, made by rank 0
            self.run_dir = shared_run_dir(self.runs_dir, self.name, self.dist.rank)
        else:
            self.run_dir = create_run_dir(self.runs_dir, self.name)
        self.name = self.run_dir.name
        if self.dist.main:
            try:
                write_meta(self.run_dir, {**meta, "name": self.name})
            except OSError as exc:  # read-only or full disk: nothing recorded yet, say so
                raise ConfigError(f"cannot write {self.run_dir / 'meta.json'}: {exc}") from exc
        self.writer = RunWriter(self.run_dir, tag=self.dist.tag)
        self.status = StatusLine(self.name, self.status_mode)
        self.status.start()
        return self.writer

    def say_once(self, message: str) -> None:
        """One ``gradlens: …`` line on stderr (rank 0, each message once)."""
        if message not in self._said and self.dist.main:
            self._said.add(message)
            print(f"gradlens: {message}", file=sys.stderr)

    def on_stats(self, stats: LiveStats) -> None:
        self.stats = stats
        if self.status is not None:
            self.status.update(stats)

    def internal_error(self, step: int, feature: str, reason: str) -> None:
        """A feature failed: an ``internal_error`` event (``meta.json`` lists it at close)."""
        if self.writer is None or not self.dist.main:
            return
        nan = float("nan")
        self.writer.write(
            "events",
            {
                "step": [step],
                "kind": ["internal_error"],
                "metric": [feature],
                "layer": [""],
                "value": [nan],
                "baseline": [nan],
                "ratio": [nan],
                "detail": [reason],
            },
        )

    def note(self, **meta: Any) -> None:
        """Add ``meta`` to ``meta.json`` while the run goes on (rank 0)."""
        if self.dist.main and self.run_dir is not None:
            update_meta(self.run_dir, **meta)

    def finish(self, status: str, steps: int, untouched: bool = False, **meta: Any) -> None:
        """Drain and compact the tables, then write the final status into ``meta.json``.

        A run that ended well having seen nothing (``untouched``: no model trained, no loss,
        no optimizer; ``train.py --help``) and holding no table row is removed, not left as a
        run that trained nothing."""
        assert self.writer is not None and self.run_dir is not None
        self.writer.close(compact=True)
        if not self.dist.main:
            return
        if status == "finished" and untouched and not self.dist.active and self._empty():
            shutil.rmtree(self.run_dir, ignore_errors=True)
            self.run_dir = None
            if self.status is not None:
                self.status.stop(
                    f"gradlens: no run kept: {self.name!r} ended before anything was recorded "
                    "(no model call, loss or optimizer step)"
                )
            return
        if self.dist.active:
            remove_pointer(self.runs_dir, self.name)
        update_meta(self.run_dir, status=status, end_time=time.time(), steps=steps, **meta)
        if self.status is not None:
            self.status.stop(
                f"gradlens: run {self.name!r} {status} after {steps} steps → {self.run_dir}"
            )

    def _empty(self) -> bool:
        assert self.run_dir is not None
        return not any(p.is_file() for p in self.run_dir.rglob("*") if p.name != "meta.json")

    def interrupted_while_closing(self, signum: int) -> None:
        """A signal held while a finished run closed: the run was interrupted after all."""
        if self.dist.main and self.run_dir is not None:
            update_meta(
                self.run_dir,
                status="interrupted",
                exit_code=exit_code_for(signum),
                error=f"{signal.Signals(signum).name} while gradlens closed the run",
            )
