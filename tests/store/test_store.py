"""Run store: atomic segments, compaction that never loses or doubles rows, status, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gradlens.errors import ConfigError, RunNotFoundError, TableError
from gradlens.store import RunWriter, create_run_dir, list_runs, open_run, write_meta
from gradlens.store.meta import process_start, run_name_for, valid_run_name
from gradlens.store.segments import readable_files
from gradlens.store.writer import compact_table


def _scalars(steps: range, value: float = 1.0) -> dict:
    return {
        "step": list(steps),
        "metric": ["loss"] * len(steps),
        "index": [0] * len(steps),
        "value": [value] * len(steps),
    }


def _new_run(runs_dir: Path, name: str = "r", status: str = "finished", **meta) -> Path:
    run_dir = create_run_dir(runs_dir, name)
    write_meta(run_dir, {"name": run_dir.name, "status": status, "start_time": 1.0, **meta})
    return run_dir


def test_segments_are_written_atomically_and_read_in_order(runs_dir):
    run_dir = _new_run(runs_dir)
    writer = RunWriter(run_dir, strict=True, min_interval=0)  # a segment per sync
    for block in range(5):
        writer.write("scalars", _scalars(range(block * 10, block * 10 + 10)))
        writer.sync()
    writer.close(compact=False)
    files, highest = readable_files(run_dir / "scalars")
    assert len(files) >= 1 and highest == len(files) - 1
    assert not [p for p in (run_dir / "scalars").iterdir() if p.name.startswith(".")]
    df = open_run(run_dir).table("scalars")
    assert df["step"].tolist() == list(range(50))


def test_compaction_keeps_every_row_once(runs_dir):
    run_dir = _new_run(runs_dir)
    writer = RunWriter(run_dir, strict=True, min_interval=0)  # a segment per sync
    for block in range(4):
        writer.write("scalars", _scalars(range(block * 3, block * 3 + 3)))
        writer.sync()
    writer.close(compact=True)
    names = sorted(p.name for p in (run_dir / "scalars").iterdir())
    assert names == ["compact-000003.parquet"]
    assert open_run(run_dir).table("scalars")["step"].tolist() == list(range(12))


def test_interrupted_compaction_neither_loses_nor_doubles_rows(runs_dir):
    """A compact file next to the segments it covers (killed before deleting them)."""
    run_dir = _new_run(runs_dir)
    writer = RunWriter(run_dir, strict=True, min_interval=0)  # a segment per sync
    for block in range(3):
        writer.write("scalars", _scalars(range(block * 2, block * 2 + 2)))
        writer.sync()
    writer.close(compact=False)
    folder = run_dir / "scalars"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    compact_table(folder)
    for name, data in before.items():  # put the covered segments back, as if never deleted
        (folder / name).write_bytes(data)
    # ...and a later segment written after the compact file
    from gradlens.store.schema import to_arrow
    from gradlens.store.segments import write_segment

    write_segment(to_arrow("scalars", _scalars(range(6, 8))), folder, 3)
    assert open_run(run_dir).table("scalars")["step"].tolist() == list(range(8))


def test_tables_filters_and_columns(runs_dir):
    run_dir = _new_run(runs_dir)
    writer = RunWriter(run_dir, strict=True)
    writer.write(
        "layers",
        {
            "step": [0, 0, 1, 1],
            "layer": ["a", "b", "a", "b"],
            "metric": ["grad_norm"] * 4,
            "value": [1.0, 2.0, 3.0, 4.0],
        },
    )
    writer.close()
    run = open_run(run_dir)
    assert run.tables() == ["layers"]
    df = run.table("layers", columns=["step", "value"], filters=[("layer", "==", "b")])
    assert list(df.columns) == ["step", "value"]
    assert df["value"].tolist() == [2.0, 4.0]
    assert run.table("events").empty and "kind" in run.table("events").columns


def test_unknown_table_rejected_by_writer_and_reader(runs_dir):
    run_dir = _new_run(runs_dir)
    writer = RunWriter(run_dir, strict=True)
    writer.write("nonsense", {"step": [0]})
    with pytest.raises(KeyError, match="unknown table"):
        writer.close()
    with pytest.raises(TableError, match="no table"):
        open_run(run_dir).table("nonsense")


def test_corrupt_segment_is_a_table_error(runs_dir):
    run_dir = _new_run(runs_dir)
    (run_dir / "scalars").mkdir()
    (run_dir / "scalars" / "part-000000.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(TableError, match="unreadable"):
        open_run(run_dir).table("scalars")


def test_missing_run_and_bad_meta(tmp_path):
    with pytest.raises(RunNotFoundError, match="not a gradlens run"):
        open_run(tmp_path / "nope")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "meta.json").write_text("{broken")
    with pytest.raises(RunNotFoundError, match=r"meta\.json: not valid JSON"):
        open_run(tmp_path / "bad")


def test_status_running_alive_and_crashed_dead(runs_dir):
    import socket

    host = socket.gethostname()
    alive = _new_run(
        runs_dir,
        "alive",
        "running",
        pid=os.getpid(),
        pid_start=process_start(os.getpid()),
        host=host,
    )
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead = _new_run(runs_dir, "dead", "running", pid=proc.pid, host=host)
    reused = _new_run(runs_dir, "reused", "running", pid=os.getpid(), pid_start=1, host=host)
    assert open_run(alive).status == "running"
    assert open_run(dead).status == "crashed"
    assert open_run(reused).status == "crashed"  # same pid, different process


def test_run_names_do_not_collide(runs_dir):
    a = create_run_dir(runs_dir, "exp")
    b = create_run_dir(runs_dir, "exp")
    assert (a.name, b.name) == ("exp", "exp-2")
    with pytest.raises(ConfigError, match="run name"):
        create_run_dir(runs_dir, "../escape")


@pytest.mark.parametrize(
    ("stem", "name"),
    [
        ("обучение", "обучение"),
        ("学习 v2", "学习-v2"),
        ("train (copy)", "train-copy-"),
        ("__", "run"),
    ],
)
def test_run_names_keep_any_scripts_letters(runs_dir, stem, name):
    assert run_name_for(stem) == name
    assert create_run_dir(runs_dir, name).name == name
    for bad in ("a b", "_x", "x/y", "x\u200b", "é" * 101):
        with pytest.raises(ConfigError, match="run name"):
            valid_run_name(bad)


def test_list_runs_sorted_by_start(runs_dir):
    _new_run(runs_dir, "late", start_time=20.0)
    _new_run(runs_dir, "early", start_time=10.0)
    (runs_dir / "not-a-run").mkdir()
    assert [r.name for r in list_runs(runs_dir)] == ["early", "late"]
    with pytest.raises(RunNotFoundError):
        list_runs(runs_dir / "missing")


def test_meta_is_json(runs_dir):
    run_dir = _new_run(runs_dir)
    assert json.loads((run_dir / "meta.json").read_text())["status"] == "finished"


def test_open_runs_is_one_tidy_frame_over_a_folder(tmp_path):
    import shutil

    from gradlens.store import open_runs
    from tests.conftest import ROOT

    runs = tmp_path / "runs"
    shutil.copytree(ROOT / "sample_runs", runs)
    (runs / "broken").mkdir()
    (runs / "broken" / "meta.json").write_text("{not json")
    loss = open_runs(runs, filters=[("metric", "==", "loss")], columns=["step", "value"])
    assert list(loss.columns) == ["step", "value", "run"]
    assert set(loss.run) == {"mlp", "mlp-spiky", "mlp-diverged", "tiny-gpt", "grokking",
                             "grokking-wd"}  # fmt: skip
    mlp = loss[loss.run == "mlp"]
    assert mlp.step.tolist() == list(range(300))
    only = open_runs(runs, "hessian", runs=["mlp", "tiny-gpt"])
    assert set(only.run) <= {"mlp", "tiny-gpt"} and len(only)
    assert open_runs(runs, "user").empty
