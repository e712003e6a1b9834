"""File-system helpers every side uses: path safety, atomic writes, digests, copy-on-write clones."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from functools import cache
from io import BufferedIOBase
from pathlib import Path
from typing import Any

from pose_factory.core import killpoint
from pose_factory.core.errors import BusyError, DiskError, UnsafeKeyError

STREAM_CHUNK = 1024 * 1024

PARTIAL_SUFFIX = ".partial"
# A partial file (atomic_write_path's, being written) older than this was left by a killed process: cleaners
# delete only those, so that they never pull one from under a writer still running.
STALE_PARTIAL_S = 600

_BAD_KEY_CHARS = re.compile(r"[\\\x00-\x1f\x7f]")


def check_relative_path(path: str, *, where: str) -> str:
    """Return path if it is a safe relative POSIX path, else raise UnsafeKeyError.

    Refused: empty, absolute, drive letters, backslashes, control characters, '.' or '..' segments,
    empty segments. These are the ways a key or manifest entry can escape its batch folder.
    """
    if not path or path.startswith("/") or _BAD_KEY_CHARS.search(path) or re.match(r"^[A-Za-z]:", path):
        raise UnsafeKeyError(f"unsafe path {path!r}: must be relative, with '/' separators only", where=where,
                             hint="the batch was written by a broken or hostile uploader; it is not pulled")
    segments = path.split("/")
    if any(seg in ("", ".", "..") for seg in segments):
        raise UnsafeKeyError(f"unsafe path {path!r}: empty, '.' or '..' segments could escape the batch folder",
                             where=where,
                             hint="the batch was written by a broken or hostile uploader; it is not pulled")
    return path


# --- digests: sha256 is the contract's (manifest entries, markers), md5 is what S3 ETags and DVC's cache use ----

def sha256_bytes(data: bytes) -> str:
    """The sha256 of some bytes, in hex."""
    return hashlib.sha256(data).hexdigest()


def md5_bytes(data: bytes) -> str:
    """The md5 of some bytes, in hex (a fingerprint for S3 and DVC, not a security measure)."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def content_digests(data: bytes, *, with_md5: bool = False) -> tuple[int, str, str]:
    """(size, sha256, md5 or '') of a file's content, as the manifest checks compare them."""
    return len(data), sha256_bytes(data), md5_bytes(data) if with_md5 else ""


def _file_digest(file: Path | BufferedIOBase, make: Callable[[], Any]) -> str:
    if isinstance(file, Path):
        with file.open("rb") as handle:
            return hashlib.file_digest(handle, make).hexdigest()
    return hashlib.file_digest(file, make).hexdigest()


def file_sha256(file: Path | BufferedIOBase) -> str:
    """The sha256 of a file (a path, or a binary handle read from where it stands), streamed."""
    return _file_digest(file, hashlib.sha256)


def file_md5(file: Path | BufferedIOBase) -> str:
    """The md5 of a file (a path, or a binary handle read from where it stands), streamed."""
    return _file_digest(file, lambda: hashlib.md5(usedforsecurity=False))


def path_md5(path: str) -> str:
    """The md5 of the file at a path given as a string, read in 1 MiB chunks through plain os calls: per file
    about half the cost of file_md5 on small files (no Path, no file object, no 256 KiB buffer), which counts at
    70,000 of them."""
    digest = hashlib.md5(usedforsecurity=False)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        while chunk := os.read(fd, 1 << 20):
            digest.update(chunk)
    finally:
        os.close(fd)
    return digest.hexdigest()


# --- the read-only mirror -------------------------------------------------------------------------------

_WRITE_BITS = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH


def make_read_only(path: str | os.PathLike[str]) -> None:
    """Take every write bit off a regular file, or off every regular file under a folder (folders stay usable,
    symlinks are left alone). The mirror's files are read-only, so a hardlink or symlink to them in the
    working set cannot be used to change them. One lstat per file: the working set calls it per file."""
    mode = os.lstat(path).st_mode
    if stat.S_ISDIR(mode):
        for folder, _, names in os.walk(path):
            for name in names:
                make_read_only(os.path.join(folder, name))
    elif stat.S_ISREG(mode) and mode & _WRITE_BITS:
        os.chmod(path, mode & ~_WRITE_BITS)


def make_read_only_at(name: str, dir_fd: int) -> None:
    """make_read_only for one file named relative to an open folder (no path to resolve): the working set calls
    it for each of 60,000 files it links, in the same loop as the links."""
    mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
    if stat.S_ISREG(mode) and mode & _WRITE_BITS:
        os.chmod(name, mode & ~_WRITE_BITS, dir_fd=dir_fd)


@contextmanager
def naming(path: Path) -> Iterator[None]:
    """Give an OSError raised inside the name of the file being written, when it has none: a write() or
    close() that fails (disk full) does not say which file, and the error shown to the user must."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            exc.filename = str(path)
        raise


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it: put it straight back
    os.umask(mask)
    return mask


@contextmanager
def atomic_write_path(dest: Path) -> Iterator[Path]:
    """Yield a temporary path beside dest; on success it replaces dest atomically, on failure it is removed.

    The file gets the permissions a plain open() would give it (0666 less the umask), not mkstemp's 0600:
    reports, pages, records and the local bucket's objects are for whoever may read their folder.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=PARTIAL_SUFFIX, dir=dest.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
    finally:
        os.close(fd)
    tmp = Path(tmp_name)
    try:
        with naming(dest):
            yield tmp
            os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def clone_file(source: Path, dest: Path) -> bool:
    """Copy-on-write clone (APFS clonefile, Linux FICLONE); False where the filesystem has none."""
    if sys.platform == "darwin":
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        return libc.clonefile(os.fsencode(source), os.fsencode(dest), 0) == 0
    if sys.platform.startswith("linux"):
        import fcntl

        ficlone = 0x40049409
        with source.open("rb") as src, dest.open("wb") as dst:
            try:
                fcntl.ioctl(dst.fileno(), ficlone, src.fileno())
                return True
            except OSError:
                pass
        dest.unlink()
    return False



# --- crash-safe folder moves -------------------------------------------------------------------------
# swap_dir is the one way a folder is replaced (the mirror's batches, the working set, a generated batch).
# Where the filesystem can exchange two names atomically (Linux renameat2, macOS renamex_np), the new folder
# takes the old one's name in one step: the name holds a complete folder at every instant (ComfyUI reading the
# working set never sees it missing), and the old folder is left where the new one was, for the caller's own
# clean-up (a build or staging folder) if a crash comes before it is deleted. Elsewhere it takes three
# renames: the old one is set aside in a hidden folder beside it, the new one is renamed into place, the old
# one is deleted; after a crash at any instant, recover_swap() finds what was set aside and leaves exactly one
# complete folder (the new one if it was in place, else the old). Across filesystems (a mirror or archive on
# another disk) the new folder is first copied into that hidden folder, so the step that makes it visible is
# still one rename. The hidden folder ignores itself in git (its own .gitignore), so what a crash leaves there
# is never committed by `git add`.

SCRATCH_NAME = ".pose-sync-tmp"


def _scratch(final: Path, create: bool = False) -> Path:
    folder = final.parent / SCRATCH_NAME
    if create and not (folder / ".gitignore").exists():
        folder.mkdir(parents=True, exist_ok=True)
        (folder / ".gitignore").write_text("*\n")
    return folder


def _aside(final: Path, create: bool = False) -> Path:
    return _scratch(final, create) / f"{final.name}.replaced"


def _copying(final: Path, create: bool = False) -> Path:
    return _scratch(final, create) / f"{final.name}.copying"


def _drop_scratch(final: Path) -> None:
    """Remove the hidden folder once nothing is set aside in it, so the parent holds only batches again."""
    folder = _scratch(final)
    if folder.is_dir() and all(entry.name == ".gitignore" for entry in folder.iterdir()):
        remove_tree(folder)


def remove_tree(path: Path) -> None:
    """Delete a folder even when parts of it are read-only (as the mirror is); missing is fine."""
    def make_writable_and_retry(function, failed, _exc) -> None:
        parent = os.path.dirname(failed)
        os.chmod(parent, os.stat(parent).st_mode | stat.S_IWUSR | stat.S_IXUSR)
        function(failed)

    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        if sys.version_info >= (3, 12):
            shutil.rmtree(path, onexc=make_writable_and_retry)
        else:
            shutil.rmtree(path, onerror=make_writable_and_retry)


def move_dir(source: Path, dest: Path, *, step: str | None = None) -> None:
    """Move a folder to dest, which must not exist; the folder appears at dest complete or not at all.

    On one filesystem this is a rename. Across filesystems (EXDEV) the folder is copied to a hidden
    sibling of dest, renamed into place, then the source is deleted; a crash before the rename leaves
    the source whole (recover_swap removes the partial copy), a crash after it leaves dest whole.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(source, dest)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    partial = _copying(dest, create=True)
    remove_tree(partial)
    shutil.copytree(source, partial, symlinks=True)
    if step:
        killpoint.reached(f"{step}:after-copy")
    os.rename(partial, dest)
    remove_tree(source)
    _drop_scratch(dest)


@cache
def _libc():
    import ctypes

    # The C library is already loaded into this process: dlopen(NULL) finds its symbols on Linux and macOS,
    # where ctypes.util.find_library would run ldconfig (a subprocess) on every first call.
    return ctypes.CDLL(None, use_errno=True)


def die_with_parent(parent: int) -> None:
    """(In a child process, first thing.) On Linux, have the kernel SIGKILL this process when its parent dies, so
    a killed command leaves nothing running; end at once if the parent is already gone. Elsewhere a no-op: there
    a child whose parent died ends when it finds nobody to send its result to."""
    if not sys.platform.startswith("linux"):
        return
    import signal

    pr_set_pdeathsig = 1
    with suppress(OSError, AttributeError):
        _libc().prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request above was made
        os._exit(1)


def exchange_dirs(a: Path, b: Path) -> bool:
    """Swap the folders at a and b in one atomic step; False (nothing changed) where the system or the
    filesystem has no such call, or a and b are on different filesystems."""
    libc = _libc()
    if sys.platform.startswith("linux") and hasattr(libc, "renameat2"):
        at_fdcwd, rename_exchange = -100, 2
        return libc.renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0
    if sys.platform == "darwin" and hasattr(libc, "renamex_np"):
        rename_swap = 2
        return libc.renamex_np(os.fsencode(a), os.fsencode(b), rename_swap) == 0
    return False


def swap_dir(new: Path, final: Path, *, step: str | None = None,
             remove: Callable[[Path], None] = remove_tree) -> None:
    """Replace the folder final (if any) with new; the old version leaves only once the new one is in place.

    `step` names the command for its kill points, so tests can prove every instant is safe: `<step>:mid-swap`
    (the new folder not in place yet, the old one still is), `<step>:set-aside` (without an atomic exchange:
    the old one set aside, the name empty), `<step>:swapped` (the new one in place, the old one not deleted).
    `remove` deletes the old version (by default remove_tree).
    """
    recover_swap(final)
    if step:
        killpoint.reached(f"{step}:mid-swap")
    if final.is_dir() and not final.is_symlink() and exchange_dirs(new, final):
        if step:
            killpoint.reached(f"{step}:swapped")
        remove(new)  # the previous version, now where the new one was
        return
    aside = _aside(final, create=True)
    if final.exists() or final.is_symlink():
        os.rename(final, aside)
        if step:
            killpoint.reached(f"{step}:set-aside")
    move_dir(new, final, step=step)
    if step:
        killpoint.reached(f"{step}:swapped")
    remove(aside)
    _drop_scratch(final)


def recover_swap(final: Path) -> str | None:
    """Finish or undo a swap_dir / move_dir that a crash interrupted; say which ("kept new", "restored old").

    The new folder is in place when final exists: the set-aside old one is deleted. Otherwise the old
    one goes back. Partial cross-filesystem copies are deleted (their source is still whole).
    """
    outcome = None
    partial, aside = _copying(final), _aside(final)
    if partial.exists():
        remove_tree(partial)
    if aside.exists():
        if final.exists():
            remove_tree(aside)
            outcome = "kept new"
        else:
            os.rename(aside, final)
            outcome = "restored old"
    _drop_scratch(final)
    return outcome


# --- one command at a time ---------------------------------------------------------------------------

@contextmanager
def exclusive_lock(path: Path, purpose: str, *, wait_s: float = 2.0) -> Iterator[None]:
    """Hold an exclusive lock on path (flock) for a command that changes the repository.

    The kernel drops the lock when its process ends, however it ends (even SIGKILL), so a lock left by a
    dead process is taken over without asking. The file records "<pid> <purpose>" for the message of the
    next command that finds the lock held (a short wait first covers `status` probing it).
    """
    import fcntl

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise DiskError(f"cannot write the lock file: {exc.strerror}", where=str(path),
                        hint="make the data folder writable (and check the disk is not full)") from None
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
                    pid = holder[0] if holder else "?"
                    what = holder[1] if len(holder) > 1 else "command"
                    raise BusyError(f"another {what} (pid {pid}) is running in this repository", where=str(path),
                                    hint="wait for it to finish (or stop it), then run the command again") from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {purpose}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays, so a waiting process keeps a valid lock target


# The hidden folders a batch is built in beside its final place (generate, the Blender renderer):
# `.<batch id>.<mkdtemp's 8 characters>.partial` (the batch) and `.blender` (the renderer's scratch); and the
# worker's `.pose-factory-worker.<8 characters>.scratch` in the temporary folder, which a restarted container keeps.
_WORK_DIR_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.(?:partial|blender|scratch)")


def remove_dead_work_dirs(parent: Path) -> list[str]:
    """Remove the work folders (held_work_dir) in parent whose process has ended; return their names.

    A work folder is held by a file lock on the folder itself for as long as its command (and any child it
    forked) runs; the kernel drops it when they end, however they end. So one nobody holds was left by a killed
    command, whatever its age, and one being written is never touched.
    """
    import fcntl

    try:
        names = [entry.name for entry in os.scandir(parent)
                 if _WORK_DIR_NAME.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    removed = []
    for name in names:
        try:
            fd = os.open(parent / name, os.O_RDONLY)
        except OSError:
            continue  # gone meanwhile (another cleaner), or not ours to open
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # its command is still running (or this file system has no locks: nothing can be told)
            try:
                remove_tree(parent / name)  # while holding the lock: see held_work_dir
            except OSError:
                continue  # not ours to remove (another user's): left as it is
            removed.append(name)
        finally:
            os.close(fd)
    return removed


@contextmanager
def held_work_dir(parent: Path, prefix: str, suffix: str, *, remove: bool = False) -> Iterator[Path]:
    """A new, empty work folder in parent (`<prefix><8 characters><suffix>`), held (see remove_dead_work_dirs)
    while the block runs, after removing those killed commands left there. With `remove`, it is removed at the
    end of the block, as a TemporaryDirectory is; else removing or renaming it is the caller's."""
    import fcntl

    parent.mkdir(parents=True, exist_ok=True)
    remove_dead_work_dirs(parent)
    while True:
        path = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent))
        fd = os.open(path, os.O_RDONLY)
        # A cleaner that opened the folder before this lock removes it while holding the lock: this waits for it,
        # then sees the folder gone and makes another.
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a file system without locks (some network ones): unheld, and no cleaner can lock it either
            break
        try:
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield path
    finally:
        try:
            if remove:
                remove_tree(path)
        finally:
            os.close(fd)


def lock_holder(path: Path) -> tuple[int, str] | None:
    """(pid, purpose) of the live process holding the lock at path, or None when nobody holds it."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return None
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
            return (int(holder[0]) if holder and holder[0].isdigit() else 0, holder[1] if len(holder) > 1 else "?")
    finally:
        os.close(fd)
