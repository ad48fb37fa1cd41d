"""Atomic writes: the old file or the new one, never half, and durable once written."""

import json
import os
import stat

import pytest

from pipeline import atomic


@pytest.fixture
def fsyncs(monkeypatch):
    """Every fsync: ``("dir" | "file", inode, what the target file held at that moment)``."""
    calls = []
    real = os.fsync

    def record(fd):
        st = os.fstat(fd)
        calls.append(("dir" if stat.S_ISDIR(st.st_mode) else "file", st.st_ino))
        real(fd)

    monkeypatch.setattr(os, "fsync", record)
    return calls


def test_write_json_syncs_the_data_before_the_rename_and_the_directory_after(
    tmp_path, fsyncs, monkeypatch
):
    target = tmp_path / "state" / "best.json"
    target.parent.mkdir()
    target.write_text("old")
    seen_before_rename = []
    real_replace = os.replace

    def replace(src, dst):
        seen_before_rename.append((list(fsyncs), target.read_text()))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    atomic.write_json(target, {"trial": 3})

    assert json.loads(target.read_text()) == {"trial": 3}
    # The new data was synced (under the temp name) while the target still held the old.
    [(synced, content)] = seen_before_rename
    assert synced == [("file", target.stat().st_ino)] and content == "old"
    assert fsyncs == [("file", target.stat().st_ino), ("dir", target.parent.stat().st_ino)]
    assert [p.name for p in target.parent.iterdir()] == ["best.json"]


def test_write_text_survives_a_directory_that_cannot_be_synced(tmp_path, monkeypatch):
    real = os.fsync

    def refuse_dirs(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(22, "Invalid argument")
        real(fd)

    monkeypatch.setattr(os, "fsync", refuse_dirs)
    atomic.write_text(tmp_path / "a.txt", "new")
    assert (tmp_path / "a.txt").read_text() == "new"


def test_a_failing_writer_leaves_the_old_file_and_no_temp_file(tmp_path, fsyncs):
    target = tmp_path / "model.keras"
    target.write_text("the old model")

    def half_then_crash(tmp):
        tmp.write_text("half a mod")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic.write_with(target, half_then_crash)
    assert target.read_text() == "the old model"
    assert [p.name for p in tmp_path.iterdir()] == ["model.keras"]
    assert fsyncs == []  # nothing was renamed, so nothing to make durable


def test_replace_dir_swaps_the_directory_and_syncs_its_parent(tmp_path, fsyncs):
    final = tmp_path / "processed"
    final.mkdir()
    (final / "old.npz").write_text("old")
    tmp = atomic.temp_dir_beside(final)
    (tmp / "train.npz").write_text("new")

    atomic.replace_dir(tmp, final)

    assert [p.name for p in final.iterdir()] == ["train.npz"]
    assert [p.name for p in tmp_path.iterdir()] == ["processed"]  # old copy and temp gone
    assert ("dir", tmp_path.stat().st_ino) in fsyncs
