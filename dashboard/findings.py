"""Stability reports for the dashboard, computed off the request thread.

``build_report`` reads whole tables; on a small run that takes milliseconds, on a 100M-row run
it takes long enough to block a page. Reports are therefore built one at a time on a daemon
thread and cached per run until its files change; pages show the latest report they have (or
"computing…") and the refresh timer picks the new one up.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from gradlens.report import Report, build_report
from gradlens.store import Run
from gradlens.store.columns import file_info, signature, table_files

__all__ = ["FindingsService", "ReportState"]


@dataclass(frozen=True)
class ReportState:
    """What a page can show: the report (maybe of an older version of the run) and why not."""

    report: Report | None
    pending: bool
    error: str | None = None


class FindingsService:
    """Reports per run, built in the background, one at a time.

    ``auto_rows``: runs with more rows than this (all tables together) are only reported on
    when a page asks for them with ``start=True`` (the run page), not from the runs list.
    """

    def __init__(self, auto_rows: int = 5_000_000) -> None:
        self.auto_rows = auto_rows
        self._lock = threading.Condition()
        self._slot = threading.Semaphore(1)
        self._done: dict[Path, tuple[tuple[object, ...], Report | None, str | None]] = {}
        self._running: set[Path] = set()

    def state(self, run: Run, start: bool = True, wait: float = 0.0) -> ReportState:
        """The report for ``run``; starts building it when missing or stale (and allowed).

        ``wait`` seconds are spent waiting for a fresh report before answering.
        """
        try:
            key = _version(run)
            allowed = start or self.small(run)
        except Exception as exc:
            return ReportState(None, False, f"unreadable: {exc}")
        with self._lock:
            done = self._done.get(run.path)
            fresh = done is not None and done[0] == key
            if not fresh and run.path not in self._running and allowed:
                self._running.add(run.path)
                threading.Thread(
                    target=self._build, args=(run, key), name="gradlens-report", daemon=True
                ).start()
            if wait > 0:
                self._lock.wait_for(lambda: run.path not in self._running, timeout=wait)
                done = self._done.get(run.path)
            running = run.path in self._running
        if done is None:
            return ReportState(None, running)
        return ReportState(done[1], running, done[2])

    def small(self, run: Run) -> bool:
        """True when ``run`` is small enough to report on without being asked."""
        rows = 0
        for table in run.tables():
            for path in table_files(run.path, table):
                rows += sum(g.rows for g in file_info(path).groups)
        return rows <= self.auto_rows

    def _build(self, run: Run, key: tuple[object, ...]) -> None:
        with self._slot:
            report, error = None, None
            try:
                report = build_report(run)
            except Exception as exc:  # shown on the page; the server keeps serving
                error = f"{type(exc).__name__}: {exc}"
        with self._lock:
            self._done[run.path] = (key, report, error)
            self._running.discard(run.path)
            self._lock.notify_all()


def _version(run: Run) -> tuple[object, ...]:
    meta = run.path / "meta.json"
    parts: list[object] = [meta.stat().st_mtime_ns if meta.exists() else 0]
    for table in run.tables():
        parts.append((table, signature(table_files(run.path, table))))
    return tuple(parts)
