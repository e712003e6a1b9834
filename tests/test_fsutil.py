"""core/fsutil: the file-system helpers every side uses. The one way a folder is swapped into place, killed at
every instant; the one read-only helper; the digests; atomic writes."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pose_factory.bucket.backends import LocalFolderStorage
from pose_factory.core import fsutil
from pose_factory.core.fsutil import SCRATCH_NAME, atomic_write_path, exchange_dirs, recover_swap, swap_dir

REPO = Path(__file__).resolve().parents[1]


def folder(path: Path, version: str) -> Path:
    """A small folder whose every file says which version it is."""
    (path / "sub").mkdir(parents=True)
    for rel in ("a.txt", "sub/b.txt", "sub/c.txt"):
        (path / rel).write_text(version)
    return path


def version_of(path: Path) -> str:
    """The one version every file of the folder holds (a mix of two would be half a swap)."""
    versions = {p.read_text() for p in path.rglob("*") if p.is_file()}
    assert len(versions) == 1, versions
    assert sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()) == [
        "a.txt", "sub/b.txt", "sub/c.txt"]
    return versions.pop()


def test_swap_replaces_a_folder_by_an_atomic_exchange(tmp_path):
    final, new = folder(tmp_path / "set", "old"), folder(tmp_path / ".set.build", "new")
    inode = new.stat().st_ino
    swap_dir(new, final)
    assert version_of(final) == "new" and final.stat().st_ino == inode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]  # no scratch folder, no old version


def test_swap_without_an_atomic_exchange_takes_three_renames(tmp_path, monkeypatch):
    monkeypatch.setattr(fsutil, "exchange_dirs", lambda a, b: False)
    final, new = folder(tmp_path / "set", "old"), folder(tmp_path / ".set.build", "new")
    swap_dir(new, final)
    assert version_of(final) == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["set"]


def test_swap_into_a_new_name_and_over_a_read_only_folder(tmp_path):
    swap_dir(folder(tmp_path / "a", "first"), tmp_path / "set")
    assert version_of(tmp_path / "set") == "first"
    fsutil.make_read_only(tmp_path / "set")
    swap_dir(folder(tmp_path / "b", "second"), tmp_path / "set")
    assert version_of(tmp_path / "set") == "second" and sorted(p.name for p in tmp_path.iterdir()) == ["set"]


def test_exchange_refuses_across_filesystems_and_swap_copies_instead(tmp_path):
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs a second filesystem (/dev/shm)")
    import tempfile

    with tempfile.TemporaryDirectory(dir=shm) as other:
        new = folder(Path(other) / "new", "new")
        final = folder(tmp_path / "set", "old")
        assert exchange_dirs(new, final) is False and version_of(final) == "old"
        swap_dir(new, final)
        assert version_of(final) == "new" and not new.exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]


KILLED_SWAP = """
import sys
from pathlib import Path
from pose_factory.bucket.backends import LocalFolderStorage
from pose_factory.core import fsutil
if sys.argv[3] == "no-exchange":
    fsutil.exchange_dirs = lambda a, b: False
fsutil.swap_dir(Path(sys.argv[1]), Path(sys.argv[2]), step="test")
"""

INSTANTS = [("test:mid-swap", "exchange", "old"), ("test:swapped", "exchange", "new"),
            ("test:mid-swap", "no-exchange", "old"), ("test:set-aside", "no-exchange", "old"),
            ("test:swapped", "no-exchange", "new")]


@pytest.mark.integration
@pytest.mark.parametrize(("point", "mode", "kept"), INSTANTS, ids=[f"{p}-{m}" for p, m, _ in INSTANTS])
def test_a_swap_killed_at_any_instant_is_recovered_whole(tmp_path, point, mode, kept):
    final, new = folder(tmp_path / "set", "old"), folder(tmp_path / ".set.build", "new")
    env = {**os.environ, "POSE_FACTORY_KILL_AT": point, "PYTHONPATH": str(REPO / "scripts")}
    done = subprocess.run([sys.executable, "-c", KILLED_SWAP, str(new), str(final), mode], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == -9, done.stderr  # SIGKILLed at the point
    recover_swap(final)
    assert version_of(final) == kept  # the old one until the new one is in place, whole either way
    assert not (tmp_path / SCRATCH_NAME).exists()
    # What is left where the new folder was is the caller's to clean: the new one, or after an exchange the old.
    leftover = [p.name for p in tmp_path.iterdir() if p.name != "set"]
    assert leftover in ([], [".set.build"])


def test_make_read_only_takes_every_write_bit_off_files_and_leaves_folders_usable(tmp_path):
    tree = folder(tmp_path / "batch", "x")
    (tree / "a.txt").chmod(0o666)
    link = tree / "link"
    link.symlink_to(tmp_path / "outside")
    (tmp_path / "outside").write_text("not the batch's")
    fsutil.make_read_only(tree)
    for path in (tree / "a.txt", tree / "sub" / "b.txt"):
        assert not path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH), path
    assert os.access(tree / "sub", os.W_OK)  # folders stay writable: swaps and DVC move files in them
    assert (tmp_path / "outside").stat().st_mode & stat.S_IWUSR  # a symlink's target is not the batch's
    single = tmp_path / "one.txt"
    single.write_text("x")
    fsutil.make_read_only(single)
    assert not single.stat().st_mode & stat.S_IWUSR
    (tree / "c.txt").write_text("c")
    (tree / "c.txt").chmod(0o664)
    folder_fd = os.open(tree, os.O_RDONLY)
    try:
        for name in ("c.txt", "a.txt", "link"):  # writable, already read-only, a symlink
            fsutil.make_read_only_at(name, folder_fd)
    finally:
        os.close(folder_fd)
    assert not (tree / "c.txt").stat().st_mode & 0o222 and (tmp_path / "outside").stat().st_mode & stat.S_IWUSR


def test_the_digests_are_sha256_and_md5(tmp_path):
    data = os.urandom(3 * fsutil.STREAM_CHUNK + 17)
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert fsutil.sha256_bytes(data) == hashlib.sha256(data).hexdigest() == fsutil.file_sha256(path)
    md5 = hashlib.md5(data).hexdigest()
    assert fsutil.md5_bytes(data) == md5 == fsutil.file_md5(path) == fsutil.path_md5(str(path))
    sized = tmp_path / "sized"
    for size in (0, 1, (1 << 20) - 1, 1 << 20, (1 << 20) + 1, 3 << 20):  # path_md5 reads 1 MiB at a time
        content = os.urandom(size)
        sized.write_bytes(content)
        assert fsutil.path_md5(str(sized)) == hashlib.md5(content).hexdigest()
    with path.open("rb") as handle:
        assert fsutil.file_md5(handle) == hashlib.md5(data).hexdigest()
    assert fsutil.content_digests(data) == (len(data), hashlib.sha256(data).hexdigest(), "")
    assert fsutil.content_digests(data, with_md5=True)[2] == hashlib.md5(data).hexdigest()


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_writes_get_the_mode_a_plain_open_would_give(tmp_path, umask):
    previous = os.umask(umask)
    try:
        with atomic_write_path(tmp_path / "report.json") as tmp:
            tmp.write_text("{}")
        with open(tmp_path / "plain.json", "w") as handle:
            handle.write("{}")
        storage = LocalFolderStorage(tmp_path / "bucket", "b")
        storage.put_bytes("batches/x/manifest.json", b"{}")
    finally:
        os.umask(previous)
    expected = stat.S_IMODE((tmp_path / "plain.json").stat().st_mode)
    assert expected == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "report.json").stat().st_mode) == expected
    assert stat.S_IMODE((tmp_path / "bucket" / "batches" / "x" / "manifest.json").stat().st_mode) == expected
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == []


def test_work_folders_a_killed_command_left_are_removed_and_held_ones_kept(tmp_path):
    def leftover(name: str) -> Path:  # as a killed generate leaves it: part of a batch, read-only files
        path = tmp_path / name
        (path / "rgb").mkdir(parents=True)
        (path / "rgb" / "000000.png").write_bytes(b"png")
        os.chmod(path / "rgb" / "000000.png", 0o444)
        os.chmod(path / "rgb", 0o555)
        return path

    with fsutil.held_work_dir(tmp_path, ".2026-11-02_run.", ".partial") as held:
        (held / "rgb").mkdir()
        dead = [leftover(".2026-11-02_run.ab_12cd9.partial"), leftover(".2026-11-01_walk.zz99yy00.blender")]
        others = [tmp_path / ".2026-11-02_run.partial", tmp_path / "my.notes12.partial", tmp_path / "2026-11-02_run"]
        for path in others:  # not work folders: a user's, a batch
            path.mkdir()
        assert sorted(fsutil.remove_dead_work_dirs(tmp_path)) == sorted(p.name for p in dead)
        assert held.is_dir() and (held / "rgb").is_dir()  # its command is running: never touched
        assert not any(p.exists() for p in dead) and all(p.is_dir() for p in others)
    # Its command has ended without renaming it (as a kill would): the next one removes it.
    with fsutil.held_work_dir(tmp_path, ".2026-11-02_run.", ".partial") as again:
        assert not held.exists() and again.is_dir() and again != held
    with fsutil.held_work_dir(tmp_path, ".pose-factory-worker.", ".scratch", remove=True) as scratch:
        (scratch / "out").mkdir()
    assert not scratch.exists()  # removed at the end, as a TemporaryDirectory is
