"""The run store: the only code that touches Parquet."""

from gradlens.store.meta import STATUSES, create_run_dir, read_meta, update_meta, write_meta
from gradlens.store.reader import Run, list_runs, open_run, open_runs
from gradlens.store.schema import SCHEMAS
from gradlens.store.writer import RunWriter

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
