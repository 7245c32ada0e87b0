"""Journals, background merges, storage failures and meta validation."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pyarrow as pa
import pytest

from gradlens.errors import GradlensError, RunNotFoundError, RunUnreadableError
from gradlens.store import RunWriter, list_runs, open_run, read_meta, update_meta, write_meta
from gradlens.store.columns import distinct, file_info, read_columns, table_files
from gradlens.store.schema import to_arrow
from gradlens.store.segments import journal_name, read_journal, readable_files, write_segment
from gradlens.store.writer import MERGE_FANOUT, compact_table, merge_segments
from tests.store.test_store import _new_run, _scalars

ROOT = Path(__file__).resolve().parents[2]


def _steps(run_dir: Path) -> list[int]:
    return open_run(run_dir).table("scalars")["step"].tolist()


# -- journals ------------------------------------------------------------------------------------


def test_rows_are_readable_from_the_journal_before_any_segment(runs_dir):
    run_dir = _new_run(runs_dir, status="running")
    writer = RunWriter(run_dir, strict=True, min_interval=3600)
    writer.write("scalars", _scalars(range(5)))
    writer.write(
        "layers", {"step": [0, 0], "layer": ["a", "b"], "metric": ["g", "h"], "value": [1, 2]}
    )
    writer.sync()
    names = sorted(p.name for p in (run_dir / "scalars").iterdir())
    assert names == [journal_name(0)]  # on disk, not yet Parquet
    assert _steps(run_dir) == list(range(5))
    files = table_files(run_dir, "layers")
    assert distinct(files, "layer") == ["a", "b"] and file_info(files[0]).groups[0].rows == 2
    read = read_columns(files, ["step", "value"], where={"layer": "b"})
    assert read.column("value").to_pylist() == [2.0]
    writer.write("scalars", _scalars(range(5, 8)))
    writer.close()
    assert sorted(p.name for p in (run_dir / "scalars").iterdir()) == ["compact-000000.parquet"]
    assert _steps(run_dir) == list(range(8))


def test_a_journal_cut_by_a_crash_reads_up_to_its_last_complete_batch(runs_dir):
    run_dir = _new_run(runs_dir)
    writer = RunWriter(run_dir, strict=True, min_interval=3600)
    for block in range(3):
        writer.write("scalars", _scalars(range(block * 4, block * 4 + 4)))
        writer.sync()
    path = run_dir / "scalars" / journal_name(0)
    data = path.read_bytes()
    writer.close(compact=False)  # (folds the journal: put the cut copy back instead)
    for p in (run_dir / "scalars").iterdir():
        p.unlink()
    path.write_bytes(data[:-10])  # the third batch cut short
    assert _steps(run_dir) == list(range(8))
    path.write_bytes(data[:20])  # not even the schema
    assert read_journal(path).num_rows == 0 and _steps(run_dir) == []


def test_a_folded_journal_left_behind_is_not_read_twice(runs_dir):
    run_dir = _new_run(runs_dir)
    writer = RunWriter(run_dir, strict=True, min_interval=3600)
    writer.write("scalars", _scalars(range(4)))
    writer.sync()
    journal = run_dir / "scalars" / journal_name(0)
    data = journal.read_bytes()
    writer.close(compact=False)
    journal.write_bytes(data)  # killed after writing part-000000, before deleting the journal
    assert sorted(p.name for p in journal.parent.iterdir()) == [
        "journal-000000.arrows",
        "part-000000.parquet",
    ]
    assert _steps(run_dir) == list(range(4))
    compact_table(journal.parent)
    assert sorted(p.name for p in journal.parent.iterdir()) == ["compact-000000.parquet"]
    assert _steps(run_dir) == list(range(4))


def test_writer_keeps_no_rows_in_memory(runs_dir):
    """Rows go to disk as they come: memory does not grow with the rows (or with --every)."""
    run_dir = _new_run(runs_dir)
    writer = RunWriter(run_dir, strict=True, min_interval=3600)
    writer.sync()
    before = pa.total_allocated_bytes()
    rows = 200_000  # 6.4 MB of scalars per write
    for block in range(5):
        writer.write("scalars", _scalars(range(block * rows, (block + 1) * rows)))
        writer.sync()
    assert pa.total_allocated_bytes() - before < 2 << 20
    writer.close(compact=False)
    assert len(_steps(run_dir)) == 5 * rows


# -- background merges -----------------------------------------------------------------------------


def bound_for(segments: int) -> int:
    """Files a table keeps after merging ``segments`` segments eight at a time."""
    return (MERGE_FANOUT - 1) * math.ceil(math.log(max(segments, 2), MERGE_FANOUT)) + 1


def _settle(folder, bound: int, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while len(list(folder.iterdir())) > bound and time.monotonic() < deadline:
        time.sleep(0.05)


def test_long_runs_keep_few_files_and_every_row_once(runs_dir):
    run_dir = _new_run(runs_dir, status="running")
    writer = RunWriter(run_dir, strict=True, min_interval=0)  # a segment per write
    folder, most = run_dir / "scalars", 0
    segments = 300
    for i in range(segments):
        writer.write("scalars", _scalars(range(i * 2, i * 2 + 2)))
        writer.sync()
        if i % 50 == 49:
            # merges run on their own thread, which a loaded CI machine may starve for a
            # while: the bound holds once it had a moment
            _settle(folder, 4 * bound_for(i + 1))
            most = max(most, len(list(folder.iterdir())))
            assert _steps(run_dir) == list(range(i * 2 + 2))
    bound = bound_for(segments)
    _settle(folder, bound)
    assert len(list(folder.iterdir())) <= bound, sorted(p.name for p in folder.iterdir())
    assert most <= 4 * bound  # also while writes keep coming
    assert any(p.name.startswith("merge-") for p in folder.iterdir())
    writer.close()
    assert [p.name for p in folder.iterdir()] == [f"compact-{segments - 1:06d}.parquet"]
    assert _steps(run_dir) == list(range(2 * segments))


def test_interrupted_merge_neither_loses_nor_doubles_rows(runs_dir):
    run_dir = _new_run(runs_dir)
    folder = run_dir / "scalars"
    for n in range(MERGE_FANOUT + 1):
        write_segment(to_arrow("scalars", _scalars(range(n * 3, n * 3 + 3))), folder, n)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    from gradlens.store.segments import segments

    kept, _ = segments(folder)
    merged = merge_segments(kept[:MERGE_FANOUT])
    assert merged.name == f"merge-000000-{MERGE_FANOUT - 1:06d}.parquet"
    assert len(list(folder.iterdir())) == 2
    for name, data in before.items():  # killed before deleting the merged segments
        (folder / name).write_bytes(data)
    (folder / ".part-000099.parquet.tmp").write_bytes(b"half a file")
    assert _steps(run_dir) == list(range(3 * (MERGE_FANOUT + 1)))
    files, highest = readable_files(folder)
    assert [f.name for f in files] == [merged.name, f"part-{MERGE_FANOUT:06d}.parquet"]
    assert highest == MERGE_FANOUT


# -- storage failures ------------------------------------------------------------------------------


def test_failed_meta_write_removes_its_temp_file_and_update_never_raises(runs_dir, capsys):
    run_dir = _new_run(runs_dir)
    (run_dir / "meta.json").unlink()
    (run_dir / "meta.json").mkdir()  # os.replace onto a folder fails, as on a read-only disk
    with pytest.raises(OSError):
        write_meta(run_dir, {"name": "r"})
    assert not (run_dir / ".meta.json.tmp").exists()
    update_meta(run_dir, status="finished")  # warns, does not raise
    update_meta(run_dir, status="finished")
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("gradlens: storage error") and "meta.json" in err[0]


def test_writer_storage_failure_is_one_warning_recorded_in_meta(runs_dir, capsys):
    run_dir = _new_run(runs_dir, status="running")
    (run_dir / "scalars").write_text("a file where the table folder should be")
    writer = RunWriter(run_dir, strict=True, min_interval=0)
    for block in range(3):
        writer.write("scalars", _scalars(range(block, block + 1)))
        writer.sync()
    writer.close()  # strict, yet a storage failure does not raise
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "storage error" in err[0] and "scalars" in err[0]
    meta = update_meta(run_dir, status="finished")
    assert "FileExistsError" in meta["storage_error"] or "NotADirectory" in meta["storage_error"]
    assert read_meta(run_dir)["storage_error"] == meta["storage_error"]


def test_failed_compaction_removes_its_temp_file_and_keeps_the_rows(runs_dir, capsys, monkeypatch):
    import errno

    import gradlens.store.writer as writer_module

    class FullDisk(writer_module.pq.ParquetWriter):  # type: ignore[misc, name-defined]
        def write_table(self, *args, **kwargs):
            assert any(p.name.startswith(".compact-") for p in (run_dir / "scalars").iterdir())
            raise OSError(errno.ENOSPC, "No space left on device")

    run_dir = _new_run(runs_dir)
    writer = RunWriter(run_dir, strict=True, min_interval=0)
    for block in range(3):
        writer.write("scalars", _scalars(range(block * 2, block * 2 + 2)))
        writer.sync()
    monkeypatch.setattr(writer_module.pq, "ParquetWriter", FullDisk)
    writer.close()
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "No space left on device" in err[0]
    names = sorted(p.name for p in (run_dir / "scalars").iterdir())
    assert names == [f"part-{n:06d}.parquet" for n in range(3)]  # no temp file left
    assert _steps(run_dir) == list(range(6))
    meta = update_meta(run_dir, status="finished")
    assert meta["storage_error"].endswith("[Errno 28] No space left on device")


def test_writer_resolves_its_folder_once(runs_dir, monkeypatch, tmp_path):
    monkeypatch.chdir(runs_dir.parent)
    run_dir = _new_run(Path(runs_dir.name))
    assert run_dir.is_absolute()
    writer = RunWriter(Path("runs") / run_dir.name, strict=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    writer.write("scalars", _scalars(range(3)))
    writer.close()
    assert _steps(run_dir) == [0, 1, 2] and not list(elsewhere.iterdir())


# -- meta validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field,value,words",
    [
        ("layers", "x", "layers must be a whole number"),
        ("start_time", 1e20, "start_time must be seconds"),
        ("start_time", math.nan, "start_time must be seconds"),
        ("start_time", "yesterday", "start_time must be seconds"),
        ("name", 5, "name must be a string"),
        ("status", "great", "status must be one of"),
        ("steps", True, "steps must be a whole number"),
        ("exit_code", 1.5, "exit_code must be an integer"),
        ("config", [], "config must be an object"),
    ],
)
def test_meta_with_wrong_types_is_unreadable_with_one_line(runs_dir, field, value, words):
    run_dir = _new_run(runs_dir)
    write_meta(run_dir, {**json.loads((run_dir / "meta.json").read_text()), field: value})
    with pytest.raises(RunUnreadableError, match=words) as caught:
        open_run(run_dir)
    assert isinstance(caught.value, GradlensError) and "\n" not in str(caught.value)


def test_meta_that_is_not_an_object_or_not_json(runs_dir):
    run_dir = _new_run(runs_dir)
    (run_dir / "meta.json").write_text("[1, 2]")
    with pytest.raises(RunUnreadableError, match="JSON object"):
        read_meta(run_dir)
    (run_dir / "meta.json").write_text("{" * 100_000)  # deep enough to overflow the parser
    with pytest.raises(RunUnreadableError, match="not valid JSON"):
        read_meta(run_dir)
    (run_dir / "meta.json").write_bytes(b"\xff\xfe")
    with pytest.raises(RunUnreadableError, match="unreadable"):
        read_meta(run_dir)


def test_one_bad_run_is_listed_as_unreadable_not_hiding_the_others(runs_dir):
    _new_run(runs_dir, "good", start_time=10.0)
    bad = _new_run(runs_dir, "bad", start_time=math.nan)
    broken = _new_run(runs_dir, "broken")
    (broken / "meta.json").write_text("{")
    runs = list_runs(runs_dir)
    assert [r.path.name for r in runs] == ["bad", "broken", "good"]
    by_name = {r.path.name: r for r in runs}
    assert by_name["good"].unreadable is None and by_name["good"].status == "finished"
    assert by_name["bad"].status == "unreadable" and by_name["bad"].steps == 0
    assert by_name["bad"].unreadable.startswith("meta.json start_time must be")
    assert by_name["broken"].unreadable.startswith("meta.json not valid JSON")
    assert by_name["bad"].name == "bad" and by_name["bad"].start_time is None
    with pytest.raises(RunNotFoundError):  # opened directly, it is an error
        open_run(bad)


def test_every_sample_run_and_fresh_meta_validate():
    for run_dir in sorted((ROOT / "sample_runs").iterdir()):
        meta = read_meta(run_dir)
        assert meta["status"] == "finished", run_dir
        run = open_run(run_dir)
        assert len(run.table("scalars")) > 0


def test_meta_keeps_unknown_fields(runs_dir):
    run_dir = _new_run(runs_dir, extra={"anything": [1, "x"]}, end_time=None)
    assert read_meta(run_dir)["extra"] == {"anything": [1, "x"]}
    assert json.loads((run_dir / "meta.json").read_text())["end_time"] is None
    assert time.time() > read_meta(run_dir)["start_time"]


def test_a_failing_disk_is_not_retried_with_a_new_file_per_flush(runs_dir, capsys, monkeypatch):
    import errno

    import gradlens.store.writer as writer_module

    def full(self, table):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer_module._Journal, "append", full)
    run_dir = _new_run(runs_dir, status="running")
    writer = RunWriter(run_dir, strict=True)
    for block in range(50):
        writer.write("scalars", _scalars(range(block, block + 1)))
        writer.sync()
    writer.close()
    assert list((run_dir / "scalars").iterdir()) == []  # the empty journal is gone too
    assert len(capsys.readouterr().err.splitlines()) == 1
    assert open_run(run_dir).table("scalars").empty


def test_tagged_writers_fold_merge_and_compact_only_their_own_files(runs_dir):
    run_dir = _new_run(runs_dir, status="running")
    writers = [RunWriter(run_dir, strict=True, min_interval=0, tag=t) for t in ("", "r1")]
    for block in range(2 * MERGE_FANOUT + 3):
        for rank, writer in enumerate(writers):
            steps = range(block * 2, block * 2 + 2)
            rows = {"step": list(steps), "rank": [rank] * 2, "metric": ["loss"] * 2}
            writer.write("ranks", {**rows, "value": [1.0] * 2})
            writer.sync()
    frame = open_run(run_dir).table("ranks")
    assert len(frame) == 2 * 2 * (2 * MERGE_FANOUT + 3)
    writers[1].close()
    names = sorted(p.name for p in (run_dir / "ranks").iterdir())
    assert "compact-r1-000018.parquet" in names and any(n.startswith("part-0") for n in names)
    writers[0].close()
    names = sorted(p.name for p in (run_dir / "ranks").iterdir())
    assert names == ["compact-000018.parquet", "compact-r1-000018.parquet"]
    frame = open_run(run_dir).table("ranks")
    assert frame.groupby("rank").size().tolist() == [2 * (2 * MERGE_FANOUT + 3)] * 2
