"""Atomic files and folders: modes under the umask, errors naming the user's path, swaps."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess

import pytest

from affvae.provenance import atomic_dir, atomic_save, atomic_write, save_torch


@contextlib.contextmanager
def umask(mask):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def test_written_files_respect_the_umask(tmp_path):
    with umask(0o022):
        with atomic_write(tmp_path / "a.txt") as fh:
            fh.write("a")
        atomic_save(tmp_path / "b.bin", lambda tmp: open(tmp, "wb").write(b"b"))
        save_torch(tmp_path / "c.pt", {"x": 1})
        with atomic_dir(tmp_path / "d") as d:
            (d / "e").write_text("e")
    for name in ("a.txt", "b.bin", "c.pt"):
        assert oct((tmp_path / name).stat().st_mode & 0o777) == oct(0o644), name
    assert oct((tmp_path / "d").stat().st_mode & 0o777) == oct(0o755)
    with umask(0o077):
        with atomic_write(tmp_path / "private.txt") as fh:
            fh.write("p")
    assert oct((tmp_path / "private.txt").stat().st_mode & 0o777) == oct(0o600)


def test_an_error_names_the_destination_not_the_temporary_file(tmp_path):
    (tmp_path / "out.csv").mkdir()
    with pytest.raises(IsADirectoryError) as e:
        with atomic_write(tmp_path / "out.csv") as fh:
            fh.write("x")
    assert e.value.filename == str(tmp_path / "out.csv")
    with pytest.raises(IsADirectoryError) as e:
        atomic_save(tmp_path / "out.csv", lambda tmp: open(tmp, "w").write("x"))
    assert e.value.filename == str(tmp_path / "out.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]  # no temporary file left


def test_an_error_without_errno_keeps_its_text(tmp_path):
    def writer(tmp):  # as pyarrow or a library raises: a message, no errno, no file name
        raise OSError("Error writing bytes to file")

    with pytest.raises(OSError) as e:
        atomic_save(tmp_path / "t.parquet", writer)
    assert e.value.filename == str(tmp_path / "t.parquet") and e.value.strerror == "Error writing bytes to file"
    assert list(tmp_path.iterdir()) == []


def test_a_read_only_folder_is_named_as_the_file_asked_for(small_fs):
    ro = small_fs(options="ro")
    with pytest.raises(OSError) as e:
        with atomic_write(ro / "config.yaml") as fh:
            fh.write("x")
    assert e.value.filename == str(ro / "config.yaml")
    assert ".tmp" not in str(e.value)


def test_a_full_disk_keeps_the_old_file_and_leaves_no_temporary(small_fs):
    fs = small_fs("64k")
    (fs / "model.pt").write_bytes(b"old")
    with pytest.raises(OSError) as e:
        save_torch(fs / "model.pt", {"w": bytes(200_000)})
    assert e.value.errno == 28 and e.value.filename == str(fs / "model.pt")
    assert (fs / "model.pt").read_bytes() == b"old"
    assert [p.name for p in fs.iterdir()] == ["model.pt"]


def test_atomic_dir_swaps_a_folder_in_whole_or_not_at_all(tmp_path):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "metrics.json").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(out, replace=True) as d:
            (d / "predictions.csv").write_text("new")
            raise KeyboardInterrupt
    assert [p.name for p in out.iterdir()] == ["metrics.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval"]  # the partial folder is gone
    with atomic_dir(out, replace=True) as d:
        (d / "predictions.csv").write_text("new")
    assert [p.name for p in out.iterdir()] == ["predictions.csv"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval"]
    with pytest.raises(OSError) as e:  # a non-empty folder is replaced only when asked
        with atomic_dir(out) as d:
            (d / "x").write_text("x")
    assert e.value.filename == str(out)
    assert [p.name for p in out.iterdir()] == ["predictions.csv"]


def test_atomic_dir_removes_partial_folders_of_dead_processes(tmp_path):
    with atomic_dir(tmp_path / "data") as d:
        partial = d
    assert not partial.exists()
    # what a process killed outright leaves behind: its partial folder, named by host and pid
    proc = subprocess.Popen(["true"])
    proc.wait()
    stale = tmp_path / partial.name.replace(f"-{os.getpid()}-", f"-{proc.pid}-")
    stale.mkdir()
    (stale / "I_00001.mrc").write_bytes(b"half")
    with atomic_dir(tmp_path / "data", replace=True) as d:
        (d / "a").write_text("a")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    shutil.rmtree(tmp_path / "data")
