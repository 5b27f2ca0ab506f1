"""rasd_hub._io: the one atomic writer of files and folders."""

from __future__ import annotations

import os

import pytest

from rasd_hub import _io


def test_atomic_file_write_fsyncs_file_and_directory_then_renames(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with _io.atomic_path(tmp_path / "a.png") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".tmp-") and tmp.name.endswith("-a.png")
        tmp.write_text("new")
        assert not (tmp_path / "a.png").exists()
    assert (tmp_path / "a.png").read_text() == "new"
    assert synced == [str(tmp), str(tmp_path)]  # the file's data, then the rename


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    _io.write_text_atomic(tmp_path / "c.json", "old")
    with pytest.raises(OSError):
        with _io.atomic_path(tmp_path / "c.json") as tmp:
            tmp.write_text("half")
            raise OSError(28, "No space left on device")
    assert (tmp_path / "c.json").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["c.json"]


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "fallback"])
def test_a_folder_is_replaced_as_a_whole(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(_io, "_exchange", lambda a, b: False)
    target = tmp_path / "w"
    with _io.atomic_dir(target) as staging:
        (staging / "a").write_text("1")
        (staging / "b").write_text("1")
    with _io.atomic_dir(target, replaceable=("a", "b")) as staging:
        (staging / "a").write_text("2")
        assert (target / "a").read_text() == "1"  # the old folder stays whole until the end
    assert sorted(p.name for p in target.iterdir()) == ["a"] and (target / "a").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]
    assert oct(target.stat().st_mode & 0o777) == oct(0o777 & ~_io._UMASK)


def test_renameat2_exchange_swaps_two_folders(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("a")
    if not _io._exchange(a, b):
        pytest.skip("renameat2(RENAME_EXCHANGE) not supported here")
    assert (b / "x").read_text() == "a" and not (a / "x").exists()


def test_stale_temporaries_are_removed(tmp_path):
    (tmp_path / ".tmp-x-step_1.pt").write_text("")
    (tmp_path / ".tmp-y-export").mkdir()
    (tmp_path / "keep.txt").write_text("")
    removed = _io.remove_stale_temporaries(tmp_path)
    assert len(removed) == 2 and [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
