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

__all__ = [
    "compact_name",
    "readable_files",
    "segment_name",
    "segment_number",
    "segment_writer",
    "write_atomic",
    "write_segment",
]

# An optional writer tag (``r1-``…) lets several processes (ranks) write one table.
_SEGMENT = re.compile(r"^part-(?:(r\d+)-)?(\d{6,})\.parquet$")
_COMPACT = re.compile(r"^compact-(?:(r\d+)-)?(\d{6,})\.parquet$")


def write_atomic(table: pa.Table, path: Path) -> None:
    """Write ``table`` to ``path`` via a dot-named temp file and an atomic rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def _tagged(kind: str, number: int, writer: str) -> str:
    return f"{kind}-{writer}-{number:06d}.parquet" if writer else f"{kind}-{number:06d}.parquet"


def segment_name(number: int, writer: str = "") -> str:
    return _tagged("part", number, writer)


def compact_name(number: int, writer: str = "") -> str:
    return _tagged("compact", number, writer)


def write_segment(table: pa.Table, folder: Path, number: int, writer: str = "") -> Path:
    """Write one flush of a table as segment ``number`` of ``writer`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / segment_name(number, writer)
    write_atomic(table, path)
    return path


def segment_number(path: Path) -> int | None:
    """The number of a segment or compact file, None for anything else."""
    match = _SEGMENT.match(path.name) or _COMPACT.match(path.name)
    return int(match.group(2)) if match else None


def segment_writer(path: Path) -> str | None:
    """The writer tag of a segment or compact file ("" untagged), None for anything else."""
    match = _SEGMENT.match(path.name) or _COMPACT.match(path.name)
    return (match.group(1) or "") if match else None


def readable_files(folder: Path, writer: str | None = None) -> tuple[list[Path], int]:
    """Files that hold the table's rows, and the highest segment number seen (-1 if none).

    Per writer, the newest compact file covers every segment up to its number; older compact
    files and covered segments are leftovers of an interrupted compaction and are skipped.
    ``writer`` restricts both answers to one writer ("" is the untagged one).
    """
    if not folder.is_dir():
        return [], -1
    compacts: dict[str, list[tuple[int, Path]]] = {}
    segments: dict[str, list[tuple[int, Path]]] = {}
    for path in folder.iterdir():
        if match := _COMPACT.match(path.name):
            compacts.setdefault(match.group(1) or "", []).append((int(match.group(2)), path))
        elif match := _SEGMENT.match(path.name):
            segments.setdefault(match.group(1) or "", []).append((int(match.group(2)), path))
    files: list[Path] = []
    highest = -1
    for tag in sorted(set(compacts) | set(segments)):
        if writer is not None and tag != writer:
            continue
        covered = max((n for n, _ in compacts.get(tag, [])), default=-1)
        files += [p for n, p in compacts.get(tag, []) if n == covered]
        files += [p for n, p in sorted(segments.get(tag, [])) if n > covered]
        highest = max([highest, covered, *(n for n, _ in segments.get(tag, []))])
    return files, highest
