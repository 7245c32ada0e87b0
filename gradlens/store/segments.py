"""Segment files: how one table's Parquet files are named, written and found.

A table is a folder. Every flush writes one complete file under a dot-name and renames it
(``.part-000007.parquet.tmp`` → ``part-000007.parquet``), so a reader never sees half a file
and a SIGKILL loses only what was not yet flushed. Compaction writes ``compact-000007.parquet``
holding every segment numbered ≤ 7 and only then deletes them; a reader that finds both reads
the compact file and ignores the segments it covers, so no row is lost or read twice.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["readable_files", "segment_number", "write_atomic", "write_segment"]

_SEGMENT = re.compile(r"^part-(\d{6,})\.parquet$")
_COMPACT = re.compile(r"^compact-(\d{6,})\.parquet$")


def write_atomic(table: pa.Table, path: Path) -> None:
    """Write ``table`` to ``path`` via a dot-named temp file and an atomic rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def write_segment(table: pa.Table, folder: Path, number: int) -> Path:
    """Write one flush of a table as segment ``number`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"part-{number:06d}.parquet"
    write_atomic(table, path)
    return path


def segment_number(path: Path) -> int | None:
    """The number of a segment or compact file, None for anything else."""
    match = _SEGMENT.match(path.name) or _COMPACT.match(path.name)
    return int(match.group(1)) if match else None


def readable_files(folder: Path) -> tuple[list[Path], int]:
    """Files that hold the table's rows, and the highest segment number seen (-1 if none).

    The newest compact file covers every segment up to its number; older compact files and
    covered segments are leftovers of an interrupted compaction and are skipped.
    """
    if not folder.is_dir():
        return [], -1
    compacts: list[tuple[int, Path]] = []
    segments: list[tuple[int, Path]] = []
    for path in folder.iterdir():
        if match := _COMPACT.match(path.name):
            compacts.append((int(match.group(1)), path))
        elif match := _SEGMENT.match(path.name):
            segments.append((int(match.group(1)), path))
    covered = max((n for n, _ in compacts), default=-1)
    files = [p for n, p in compacts if n == covered]
    files += [p for n, p in sorted(segments) if n > covered]
    highest = max([covered, *(n for n, _ in segments)])
    return files, highest
