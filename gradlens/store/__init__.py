"""The run store: the only code that touches Parquet.

The reader (``Run``, ``open_run``…) is imported on first use: the training process writes
with pyarrow alone and never imports pandas.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gradlens.store.meta import STATUSES, create_run_dir, read_meta, update_meta, write_meta
from gradlens.store.schema import SCHEMAS
from gradlens.store.writer import RunWriter

if TYPE_CHECKING:
    from gradlens.store.reader import Run, list_runs, open_run, open_runs

__all__ = [
    "SCHEMAS",
    "STATUSES",
    "Run",
    "RunWriter",
    "create_run_dir",
    "list_runs",
    "open_run",
    "open_runs",
    "read_meta",
    "update_meta",
    "write_meta",
]

_READER = frozenset({"Run", "list_runs", "open_run", "open_runs"})


def __getattr__(name: str) -> Any:
    if name in _READER:
        return getattr(importlib.import_module("gradlens.store.reader"), name)
    raise AttributeError(f"module 'gradlens.store' has no attribute {name!r}")
