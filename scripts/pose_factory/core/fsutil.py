"""File-system helpers every side uses: path safety, atomic writes, digests, copy-on-write clones."""

from __future__ import annotations

import hashlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pose_factory.core.errors import UnsafeKeyError

STREAM_CHUNK = 1024 * 1024

PARTIAL_SUFFIX = ".partial"

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


def file_digests(path: Path) -> tuple[str, str]:
    """(sha256, md5) of a file, read once."""
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        while chunk := handle.read(STREAM_CHUNK):
            sha.update(chunk)
            md5.update(chunk)
    return sha.hexdigest(), md5.hexdigest()


@contextmanager
def atomic_write_path(dest: Path) -> Iterator[Path]:
    """Yield a temporary path beside dest; on success it replaces dest atomically, on failure it is removed."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=PARTIAL_SUFFIX, dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
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

