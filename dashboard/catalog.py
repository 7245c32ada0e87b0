"""The runs the dashboard may show: folders directly under one directory, chosen by name.

Names come from URLs and from the browser, so they are never joined into a path as given: a
name must be one of the folder names listed under the root (no separators, no ``..``) and the
folder must resolve to a place inside the root.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeGuard

from gradlens.errors import GradlensError
from gradlens.store import Run, list_runs, open_run

__all__ = ["RunCatalog", "UnknownRunError"]


class UnknownRunError(GradlensError):
    """The name is not a run listed under the dashboard's directory."""


class RunCatalog:
    """Runs directly under ``root``, looked up by folder name only.

    Example:
        >>> catalog = RunCatalog(Path("sample_runs"))          # doctest: +SKIP
        >>> catalog.open("mlp").status
        'finished'
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise GradlensError(f"{root}: no such directory")

    def runs(self) -> list[Run]:
        """Every run under the root, oldest first (read fresh: statuses change)."""
        return [r for r in list_runs(self.root) if self._inside(r.path)]

    def names(self) -> list[str]:
        """Folder names of the readable runs, oldest first."""
        return [r.path.name for r in self.runs() if not _broken(r)]

    def unreadable(self) -> dict[str, str]:
        """Folders with a ``meta.json`` that cannot be opened as runs: name → reason.

        A broken run is listed with its reason instead of vanishing from the dashboard.
        """
        listed = self.runs()
        out = {r.path.name: str(r.unreadable) for r in listed if _broken(r)}
        for path in sorted(self.root.iterdir()):
            if path.name in {r.path.name for r in listed}:
                continue
            if not (path / "meta.json").is_file() or not self._inside(path):
                continue
            try:
                open_run(path)
            except Exception as exc:
                out[path.name] = str(exc).replace(str(path), path.name)
        return out

    def open(self, name: object) -> Run:
        """The run in folder ``name``; ``UnknownRunError`` for anything else."""
        if not _plain_name(name):
            raise UnknownRunError(f"not a run name: {name!r}")
        listed = {p.name for p in self.root.iterdir()}
        path = self.root / name
        if name not in listed or not self._inside(path) or not (path / "meta.json").is_file():
            raise UnknownRunError(f"no run named {name!r} under {self.root}")
        return open_run(path)

    def _inside(self, path: Path) -> bool:
        return path.resolve().parent == self.root


def _broken(run: Run) -> bool:
    """True for a run the store lists but cannot read (``Run.unreadable`` says why)."""
    return getattr(run, "unreadable", None) is not None


def _plain_name(name: object) -> TypeGuard[str]:
    return (
        isinstance(name, str)
        and 0 < len(name) <= 255
        and name not in (".", "..")
        and not any(c in name for c in "/\\\0")
    )
