"""Segment files: how one table's files are named, written and found.

A table is a folder. Its rows live in numbered files of four kinds, each covering a range of
segment numbers (per writer tag):

========================================  ===========  ================================
name                                      covers       written
========================================  ===========  ================================
``journal-000007.arrows``                 7            appended at every flush (Arrow IPC
                                                       stream; readable up to its last
                                                       complete batch after a crash)
``part-000007.parquet``                   7            the journal folded into Parquet
``merge-000000-000007.parquet``           0 … 7        background merge of a long run
``compact-000007.parquet``                0 … 7        compaction when the run closes
========================================  ===========  ================================

Parquet files are written under a dot-name and renamed (``.part-000007.parquet.tmp`` →
``part-000007.parquet``), so a reader never sees half of one, and only then are the files it
covers deleted. A reader that finds a file and others it covers (an interrupted fold, merge or
compaction) reads the covering file only; for equal ranges Parquet wins over the journal. So
no row is lost or read twice at any point, and a SIGKILL loses only rows not yet flushed.
A finished run holds one ``compact-`` file per table, the layout every gradlens version reads.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from gradlens.store.failures import remove_quietly

__all__ = [
    "JOURNAL_SUFFIX",
    "Segment",
    "compact_name",
    "is_journal",
    "journal_name",
    "merge_name",
    "read_journal",
    "read_segment",
    "readable_files",
    "segment_name",
    "segment_number",
    "segment_writer",
    "segments",
    "write_atomic",
    "write_segment",
]

JOURNAL_SUFFIX = ".arrows"

# An optional writer tag (``r1-``…) lets several processes (ranks) write one table.
_SEGMENT = re.compile(r"^part-(?:(r\d+)-)?(\d{6,})\.parquet$")
_COMPACT = re.compile(r"^compact-(?:(r\d+)-)?(\d{6,})\.parquet$")
_MERGE = re.compile(r"^merge-(?:(r\d+)-)?(\d{6,})-(\d{6,})\.parquet$")
_JOURNAL = re.compile(r"^journal-(?:(r\d+)-)?(\d{6,})\.arrows$")
# For equal ranges, the kind read (higher wins).
_RANK = {"journal": 0, "part": 1, "merge": 2, "compact": 3}


@dataclass(frozen=True)
class Segment:
    """One file of a table: its kind, writer tag and the segment numbers it covers."""

    path: Path
    kind: str  # journal, part, merge or compact
    tag: str
    lo: int
    hi: int

    def covers(self, other: Segment) -> bool:
        """True if this file holds every row of ``other`` (same writer, wider or equal range)."""
        return self.tag == other.tag and self.lo <= other.lo and other.hi <= self.hi


def parse(path: Path) -> Segment | None:
    """The segment that ``path`` names, None for any other file (temporary files included)."""
    name = path.name
    if match := _SEGMENT.match(name):
        number = int(match.group(2))
        return Segment(path, "part", match.group(1) or "", number, number)
    if match := _JOURNAL.match(name):
        number = int(match.group(2))
        return Segment(path, "journal", match.group(1) or "", number, number)
    if match := _COMPACT.match(name):
        return Segment(path, "compact", match.group(1) or "", 0, int(match.group(2)))
    if match := _MERGE.match(name):
        lo, hi = int(match.group(2)), int(match.group(3))
        return Segment(path, "merge", match.group(1) or "", lo, hi) if lo <= hi else None
    return None


def write_atomic(table: pa.Table, path: Path) -> None:
    """Write ``table`` to ``path`` via a dot-named temp file and an atomic rename.

    On failure the temp file is removed and the error raised.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise


def _tagged(kind: str, number: int, writer: str, suffix: str = ".parquet") -> str:
    return f"{kind}-{writer}-{number:06d}{suffix}" if writer else f"{kind}-{number:06d}{suffix}"


def segment_name(number: int, writer: str = "") -> str:
    return _tagged("part", number, writer)


def compact_name(number: int, writer: str = "") -> str:
    return _tagged("compact", number, writer)


def journal_name(number: int, writer: str = "") -> str:
    return _tagged("journal", number, writer, JOURNAL_SUFFIX)


def merge_name(lo: int, hi: int, writer: str = "") -> str:
    return _tagged("merge", lo, writer, f"-{hi:06d}.parquet")


def is_journal(path: Path) -> bool:
    return path.name.endswith(JOURNAL_SUFFIX)


def write_segment(table: pa.Table, folder: Path, number: int, writer: str = "") -> Path:
    """Write one flush of a table as segment ``number`` of ``writer`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / segment_name(number, writer)
    write_atomic(table, path)
    return path


def segment_number(path: Path) -> int | None:
    """The highest segment number a table file covers, None for anything else."""
    segment = parse(path)
    return segment.hi if segment else None


def segment_writer(path: Path) -> str | None:
    """The writer tag of a table file ("" untagged), None for anything else."""
    segment = parse(path)
    return segment.tag if segment else None


def segments(folder: Path, writer: str | None = None) -> tuple[list[Segment], int]:
    """The files to read (no file covered by another), and the highest number seen (-1).

    Sorted by writer tag then segment number. ``writer`` restricts both answers to one writer
    ("" is the untagged one).
    """
    if not folder.is_dir():
        return [], -1
    found: list[Segment] = []
    for path in folder.iterdir():
        segment = parse(path)
        if segment is not None and (writer is None or segment.tag == writer):
            found.append(segment)
    # By start, widest first, then the preferred kind: a file is covered exactly when it ends
    # within the reach of the files kept before it (the ranges form a nested family).
    found.sort(key=lambda s: (s.tag, s.lo, -s.hi, -_RANK[s.kind]))
    kept: list[Segment] = []
    reach: dict[str, int] = {}
    for segment in found:
        if segment.hi > reach.get(segment.tag, -1):
            kept.append(segment)
            reach[segment.tag] = segment.hi
    return kept, max((s.hi for s in found), default=-1)


def readable_files(folder: Path, writer: str | None = None) -> tuple[list[Path], int]:
    """Files that hold the table's rows, and the highest segment number seen (-1 if none).

    See the module docstring for which files are read when one covers another.
    """
    kept, highest = segments(folder, writer)
    return [s.path for s in kept], highest


def read_journal(path: Path, schema: pa.Schema | None = None) -> pa.Table:
    """The complete record batches of a journal (a crash may have cut the last one short).

    ``schema`` is used when the file holds no schema yet (just created or cut short).
    Raises ``OSError`` if the file cannot be read.
    """
    data = path.read_bytes()
    batches: list[pa.RecordBatch] = []
    try:
        reader = pa.ipc.open_stream(pa.BufferReader(data))
    except (pa.ArrowInvalid, OSError):  # empty, or cut inside the schema message
        return (schema or pa.schema([])).empty_table()
    while True:
        try:
            batches.append(reader.read_next_batch())
        except StopIteration:
            break
        except (pa.ArrowInvalid, OSError):  # a batch cut short by a crash: the end
            break
    return pa.Table.from_batches(batches, schema=reader.schema).combine_chunks()


def read_segment(path: Path, columns: list[str] | None = None) -> pa.Table:
    """All rows of one table file, journal or Parquet."""
    if is_journal(path):
        table = read_journal(path)
        return table.select(columns) if columns is not None else table
    return pq.read_table(path, columns=columns)
