"""Errors gradlens reports to users as one line (the CLI turns them into exit code 2)."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "GradlensError",
    "RunNotFoundError",
    "RunUnreadableError",
    "TableError",
]


class GradlensError(Exception):
    """Base class: a problem with the user's input, told in one line."""


class RunNotFoundError(GradlensError):
    """The path is not a gradlens run (no ``meta.json``)."""


class RunUnreadableError(RunNotFoundError, ValueError):
    """The run's ``meta.json`` is there but unreadable or invalid; the message says why.

    A ``RunNotFoundError`` (and a ``ValueError``) too, so callers written before it existed
    still catch it.
    """


class TableError(GradlensError):
    """A table is missing, unknown or cannot be read."""


class ConfigError(GradlensError):
    """A configuration file or option is invalid."""
