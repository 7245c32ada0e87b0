"""The run folder a torchrun run shares: rank 0 creates it, the other ranks follow the pointer."""

from __future__ import annotations

import pytest

from gradlens.store.shared import remove_pointer, shared_run_dir


@pytest.fixture(autouse=True)
def _run_id(monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job/7")


def test_other_ranks_get_the_folder_rank_0_created(tmp_path):
    (tmp_path / "train").mkdir()  # taken: rank 0 creates train-2
    first = shared_run_dir(tmp_path, "train", 0)
    assert first == tmp_path.absolute() / "train-2" and first.is_dir()
    assert shared_run_dir(tmp_path, "train", 1) == first
    assert [p.name for p in tmp_path.glob(".gradlens-*")] == [".gradlens-job_7-train"]
    remove_pointer(tmp_path, "train-2")
    assert not list(tmp_path.glob(".gradlens-*"))
    assert first.is_dir()


def test_a_rank_gives_up_when_rank_0_never_creates_the_folder(tmp_path):
    with pytest.raises(RuntimeError, match=r"^rank 3: rank 0 created no run folder in 0 s$"):
        shared_run_dir(tmp_path, "train", 3, timeout=0.1)
