"""Naming runs on the command line: a path, or a name in the runs folder.

``gradlens report mlp`` finds ``$RUNS_DIR/mlp``, where the runs folder is ``--runs-dir``, else
``$GRADLENS_DIR``, else ``./runs``; a path that exists always wins. What is not a run says what
it is instead (a meta.json file, a folder of runs, a file), and a typo gets a did-you-mean.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from gradlens.errors import GradlensError, RunNotFoundError

__all__ = ["default_runs_dir", "resolve_run", "run_folders", "runs_folder"]


def default_runs_dir(runs_dir: Path | None = None) -> Path:
    """``runs_dir``, else ``$GRADLENS_DIR``, else ``./runs``."""
    if runs_dir is not None:
        return runs_dir
    return Path(os.environ.get("GRADLENS_DIR") or "runs")


def run_folders(folder: Path) -> list[Path]:
    """The sub-folders of ``folder`` holding a ``meta.json``, sorted by name."""
    try:
        children = list(folder.iterdir())
    except OSError:
        return []
    return sorted((c for c in children if (c / "meta.json").is_file()), key=lambda p: p.name)


def resolve_run(argument: str, runs_dir: Path | None = None) -> Path:
    """The run folder ``argument`` names: a path to a run, or a run's name in the runs folder.

    Raises ``RunNotFoundError`` with a one-line reason (and a did-you-mean) otherwise.
    """
    path = Path(argument)
    if path.exists():
        return _existing(path, argument)
    folder = default_runs_dir(runs_dir)
    if path.name == argument and argument not in ("", ".", ".."):  # a bare name
        candidate = folder / argument
        if (candidate / "meta.json").is_file():
            return candidate
        names = [p.name for p in run_folders(folder)]
        if not folder.is_dir():
            raise RunNotFoundError(
                f"no run {argument!r}: not a path, and the runs folder {folder} does not "
                "exist (set --runs-dir or GRADLENS_DIR)"
            )
        close = difflib.get_close_matches(argument, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else _listing(names)
        raise RunNotFoundError(f"no run {argument!r} in {folder}{hint}")
    raise RunNotFoundError(f"{argument}: no such run folder")


def _existing(path: Path, argument: str) -> Path:
    if path.is_file():
        if path.name == "meta.json":
            raise RunNotFoundError(
                f"{argument} is a run's meta.json; name the run folder: {path.parent}"
            )
        raise RunNotFoundError(f"{argument} is a file, not a run folder")
    if (path / "meta.json").is_file():
        return path
    inside = run_folders(path)
    if inside:
        names = ", ".join(p.name for p in inside[:3]) + (", …" if len(inside) > 3 else "")
        raise RunNotFoundError(
            f"{argument} is a folder of runs ({names}), not a run; name one, "
            f"e.g. {path / inside[0].name}"
        )
    raise RunNotFoundError(f"{argument}: not a gradlens run (no meta.json)")


def _listing(names: list[str]) -> str:
    if not names:
        return " (it holds no runs)"
    shown = ", ".join(names[:5]) + (", …" if len(names) > 5 else "")
    return f"; runs there: {shown}"


def runs_folder(argument: Path) -> Path:
    """``argument`` if it is a folder of runs (``ls``), else a one-line ``GradlensError``."""
    if not argument.exists():
        raise GradlensError(f"{argument}: no such directory")
    if argument.is_file():
        raise GradlensError(f"{argument} is a file, not a folder of runs")
    if (argument / "meta.json").is_file():
        parent = argument.parent if str(argument.parent) != "" else Path(".")
        raise GradlensError(
            f"{argument} is a run, not a folder of runs; "
            f"list its folder (gradlens ls {parent}) or report on it (gradlens report {argument})"
        )
    return argument
