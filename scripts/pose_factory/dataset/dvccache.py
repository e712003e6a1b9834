"""What `dvc add` and `dvc checkout` do to a batch folder, done from hashes pose-sync already has.

`dvc add` of a folder hashes every file (md5), puts each into DVC's cache (`.dvc/cache/files/md5/xx/...`,
linked or copied by `cache.type`), writes the folder's listing as a `.dir` object and the `.dvc` file, and
records each file's (inode, mtime, size) -> md5 in its state database so that `dvc status` never hashes
again. It does all of this per file in Python, about 1.5 ms a file: 100 s of a 70,000-file pull. A pull
has already read every byte once (sha256 against the manifest, md5 in the same read), so here the same
result is written in one tight loop: one `lstat` and one link (or clone, or copy) per file, the `.dir`
object and the `.dvc` file in DVC's own format, and the state entries through DVC's own `State`.

It stays indistinguishable from `dvc add` to DVC: tests/test_dvc_fast.py compares the `.dvc` file, the
`.dir` object, the cache objects and the state entries byte for byte with what real `dvc add` writes,
and runs `dvc status`, `dvc data status`, `push`, `pull` into a clone, `checkout` of an older version and
`gc` on the result. What this module does not do as DVC would (a symlink cache type, a shared cache,
autostage, `.dvcignore` patterns, a `.dvc` file with fields of your own) is left to DVC's own `add`.

Every step can be repeated: cache objects are content-addressed (a killed run leaves objects a rerun
reuses or `dvc gc` drops), and the `.dvc` file is written last, atomically.

A *seal* is written last of all: what the folders of the batch looked like (inode, mtime) once they
matched the `.dvc` file, so `status` can say a batch is unchanged from a few `stat` calls instead of
one per file (see `sealed`).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pose_factory.core import contract, killpoint
from pose_factory.core.console import log_command
from pose_factory.core.errors import IntegrityError
from pose_factory.core.fsutil import atomic_write_path, clone_file, make_read_only, md5_bytes, sha256_bytes

# rel path -> (size, md5)
Md5s = dict[str, tuple[int, str]]

CACHE_MODE = 0o444  # dvc-data's LocalHashFileDB.CACHE_MODE: a cache object is read-only
SEAL_VERSION = 1
# The keys `dvc add` writes for a folder output, in its order: a .dvc file holding only these is ours to rewrite.
DVC_OUT_KEYS = ("md5", "size", "nfiles", "hash", "path")


@dataclass
class Added:
    """One folder given to DVC: its .dvc file and what it records."""

    dvc_file: Path
    dir_md5: str  # "<md5>.dir"
    files: int
    bytes: int
    by_dvc: bool = False  # DVC's own `add` did it (see unsupported)


class _Link:
    """Make a file from another by the first of DVC's cache types that works between two folders, probed
    once per run with a scratch file, as `dvc checkout` probes them (dvc-objects' test_links)."""

    def __init__(self, types: list[str], source_dir: str, dest_dir: str):
        self.kind = ""
        for kind in (t for t in types if t in ("reflink", "hardlink", "copy")):
            probe = f"{source_dir}{os.sep}.pose-sync-probe-{uuid.uuid4().hex[:12]}"
            dest = f"{dest_dir}{os.sep}.pose-sync-probe-{uuid.uuid4().hex[:12]}"
            try:
                with open(probe, "wb") as handle:
                    handle.write(b"probe")
                self.make_with(kind, probe, dest)
                self.kind = kind
                break
            except OSError:
                continue
            finally:
                for path in (probe, dest):
                    if os.path.lexists(path):
                        os.unlink(path)
        if not self.kind:
            raise OSError(errno.ENOTSUP, f"none of the cache types {','.join(types)} works here", dest_dir)

    @staticmethod
    def make_with(kind: str, source: str, dest: str) -> None:
        if kind == "hardlink":
            os.link(source, dest)
        elif kind == "reflink":
            if not clone_file(Path(source), Path(dest)):
                raise OSError(errno.ENOTSUP, "no copy-on-write clones here", dest)
        else:
            import shutil

            shutil.copyfile(source, dest)

    def make(self, source: str, dest: str) -> None:
        """Create dest (which must not exist) from source; it appears whole or not at all."""
        if self.kind == "hardlink":
            os.link(source, dest)
            return
        tmp = _tmp_beside(dest)
        try:
            self.make_with(self.kind, source, tmp)
            os.chmod(tmp, CACHE_MODE)
            os.rename(tmp, dest)
        finally:
            if os.path.lexists(tmp):
                os.unlink(tmp)

    def replace(self, source: str, dest: str) -> None:
        """Put source in place of an existing dest in one rename."""
        tmp = _tmp_beside(dest)
        try:
            self.make_with(self.kind, source, tmp)
            if self.kind != "hardlink":
                os.chmod(tmp, CACHE_MODE)
            os.replace(tmp, dest)
        finally:
            if os.path.lexists(tmp):
                os.unlink(tmp)


def _tmp_beside(path: str) -> str:
    return f"{path}.{uuid.uuid4().hex[:12]}.tmp"


def _info(st: os.stat_result) -> dict[str, Any]:
    """The fields of dvc-data's `_localfs_info` that its State keys on (inode, mtime, size)."""
    return {"ino": st.st_ino, "mtime": st.st_mtime, "size": st.st_size}


def dvcignore_patterns(root: Path, folder: Path) -> bool:
    """Whether a .dvcignore at the root or above the folder holds a pattern (DVC would leave files out)."""
    for parent in (folder, *folder.parents):
        ignore = parent / ".dvcignore"
        if ignore.is_file():
            lines = ignore.read_text(encoding="utf-8", errors="replace").splitlines()
            if any(line.strip() and not line.lstrip().startswith("#") for line in lines):
                return True
        if parent == root:
            break
    return False


def _dvc_file_is_plain(dvc_file: Path, name: str) -> bool:
    """A .dvc file that holds only what `dvc add` writes for this folder (nothing of yours to keep)."""
    if not dvc_file.exists():
        return True
    import yaml

    try:
        record = yaml.safe_load(dvc_file.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return False
    if not isinstance(record, dict) or set(record) != {"outs"} or not isinstance(record["outs"], list):
        return False
    if len(record["outs"]) != 1 or not isinstance(record["outs"][0], dict):
        return False
    out = record["outs"][0]
    return set(out) <= set(DVC_OUT_KEYS) and out.get("path") == name


def cache_unsupported(repo: Any) -> str | None:
    """The cache setting (a symlink cache type, a shared cache) under which DVC itself must link files."""
    types = list(repo.cache.local.cache_types)
    if not types or any(t not in ("reflink", "hardlink", "copy") for t in types):
        return f"cache.type {','.join(types)}"
    if repo.config["cache"].get("shared"):
        return "cache.shared"
    return None


def unsupported(repo: Any, root: Path, folder: Path) -> str | None:
    """Why this folder must go through DVC's own `add`, or None when the fast path does what DVC would."""
    reason = cache_unsupported(repo)
    if reason:
        return reason
    if repo.config["core"].get("autostage"):
        return "core.autostage"
    if dvcignore_patterns(root, folder):
        return ".dvcignore patterns"
    if not _dvc_file_is_plain(folder.with_name(folder.name + ".dvc"), folder.name):
        return "the .dvc file holds fields of its own"
    return None


def dir_object_bytes(md5s: Md5s) -> bytes:
    """The `.dir` object DVC writes for a folder: its files sorted by path, as dvc-data's Tree.as_bytes().

    Built directly (Tree builds a trie and two objects per file: 0.5 s for 70,000 files, this 0.07 s);
    tests compare it byte for byte with Tree.as_bytes() and with real `dvc add`.
    """
    return json.dumps([{"md5": md5s[rel][1], "relpath": rel} for rel in sorted(md5s)], sort_keys=True).encode()


def dvc_file_text(name: str, dir_md5: str, size: int, nfiles: int) -> str:
    """The .dvc file `dvc add` writes for a folder, through DVC's own YAML writer (its quoting rules)."""
    from dvc.utils.serialize import dumps_yaml

    return dumps_yaml({"outs": [{"md5": dir_md5, "size": size, "nfiles": nfiles, "hash": "md5", "path": name}]})


def _put_object(odb_dir: str, link: _Link, source: str, md5: str, size: int, made: set[str]) -> None:
    """Make the cache object of a verified workspace file.

    An object already there is replaced by the verified file where that costs no copy (hardlink, reflink):
    the content just checked against the manifest wins over whatever the cache held. With copies, an
    object DVC would trust (read-only, same size) is kept, as `dvc add` keeps it.
    """
    parent = f"{odb_dir}{os.sep}{md5[:2]}"
    obj = f"{parent}{os.sep}{md5[2:]}"
    if parent not in made:
        os.makedirs(parent, exist_ok=True)
        made.add(parent)
    if link.kind == "hardlink":
        try:
            os.link(source, obj)
            return
        except FileExistsError:
            if os.stat(obj).st_ino == os.stat(source).st_ino:
                return
        link.replace(source, obj)
        return
    try:
        existing = os.stat(obj)
    except FileNotFoundError:
        link.make(source, obj)
        return
    if link.kind == "copy" and stat.S_IMODE(existing.st_mode) == CACHE_MODE and existing.st_size == size:
        return
    link.replace(source, obj)


def _write_object(odb_dir: str, oid: str, data: bytes) -> str:
    parent = f"{odb_dir}{os.sep}{oid[:2]}"
    obj = f"{parent}{os.sep}{oid[2:]}"
    os.makedirs(parent, exist_ok=True)
    if os.path.exists(obj) and stat.S_IMODE(os.stat(obj).st_mode) == CACHE_MODE:
        return obj
    with atomic_write_path(Path(obj)) as tmp:
        tmp.write_bytes(data)
        tmp.chmod(CACHE_MODE)
    return obj


def _record_state(repo: Any, items: Iterable[tuple[str, str, dict[str, Any]]], folder: str,
                  mtimes: dict[str, float]) -> None:
    """Record (path -> md5) for every file and object, and the folder as a link DVC made, as `dvc add` does."""
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.utils import _tokenize_mtimes
    from dvc_objects.fs.system import inode

    state = repo.state
    state.save_many(((path, HashInfo("md5", md5), info) for path, md5, info in items), repo.cache.local.fs)
    state.set_link(folder, inode(folder), _tokenize_mtimes(mtimes))


def _sealable_folders(rels: Iterable[str]) -> list[str]:
    folders = {""}
    for rel in rels:
        parts = rel.split("/")
        for depth in range(1, len(parts)):
            folders.add("/".join(parts[:depth]))
    return sorted(folders)


def _folder_marks(folder: Path, rels: list[str]) -> list[list[Any]]:
    marks = []
    for rel in rels:
        st = os.stat(os.path.join(folder, rel) if rel else folder)
        marks.append([rel, st.st_ino, st.st_mtime_ns])
    return marks


def _meta_line(rel: str, st: os.stat_result) -> str:
    return f"{rel}\0{st.st_ino}\0{st.st_mtime_ns}\0{st.st_size}\n"


def _meta_digest(lines: list[str]) -> str:
    lines.sort()
    return sha256_bytes("".join(lines).encode("utf-8", "surrogateescape"))


# --- the fast `dvc add` ------------------------------------------------------------------------------------

def add(root: Path, folders: list[Path], md5s: dict[Path, Md5s] | None = None, *, step: str = "pull",
        seal_dir: Path | None = None) -> list[Added]:
    """`dvc add` each folder from known md5s (one .dvc file per folder); return what each records.

    md5s maps a folder to {rel path: (size, md5)} of every file in it, manifest.json included; a folder
    without them is read once here (a pull finishing after a crash). Files end read-only, as DVC leaves them.
    """
    from pose_factory.dataset.dvcrepo import open_repo

    if not folders:
        return []
    results = []
    with open_repo(root) as repo:
        for folder in folders:
            known = (md5s or {}).get(folder)
            reason = unsupported(repo, root, folder)
            if reason:
                target = folder.relative_to(root).as_posix()
                log_command(logging.getLogger(__name__), ["dvc", "add", target])  # in-process: DVC's own add
                repo.add([target])
                results.append(_by_dvc(folder))
                make_read_only(folder)
                continue
            if known is None:
                known = folder_md5s(folder)
            logging.getLogger(__name__).info("dvc add %s: written by pose-sync from the md5s it computed (cache "
                                             "objects, .dir object, .dvc file, DVC's state)",
                                             folder.relative_to(root).as_posix())
            added, lines = _add_one(repo, folder, known, step)
            results.append(added)
            killpoint.reached(f"{step}:after-dvc-file")
            if seal_dir is not None:
                seal(seal_dir, folder, added.dir_md5, known, lines)
    return results


def _by_dvc(folder: Path) -> Added:
    record = read_dvc_file(folder.with_name(folder.name + ".dvc"))
    return Added(folder.with_name(folder.name + ".dvc"), record["md5"], int(record.get("nfiles") or 0),
                 int(record.get("size") or 0), by_dvc=True)


def folder_md5s(folder: Path) -> Md5s:
    """{rel path: (size, md5)} of every file under the folder, each read once."""
    files, symlinks = contract.walk_files(folder)
    if symlinks:
        raise IntegrityError(f"symlink in a batch folder: {symlinks[0]}", where=str(folder),
                             hint="a batch folder holds regular files only; pull the batch again")

    def md5(rel: str, data: bytes) -> tuple[int, str]:
        return len(data), md5_bytes(data)

    return contract.map_files(folder, sorted(files), md5)


def _add_one(repo: Any, folder: Path, md5s: Md5s, step: str) -> tuple[Added, list[str]]:
    odb = repo.cache.local
    odb_dir = odb.path
    os.makedirs(odb_dir, exist_ok=True)
    link = _Link(list(odb.cache_types), str(folder), odb_dir)
    base = str(folder)
    made: set[str] = set()
    items: list[tuple[str, str, dict[str, Any]]] = []
    mtimes: dict[str, float] = {}
    lines: list[str] = []
    total = 0
    for rel in sorted(md5s):
        size, md5 = md5s[rel]
        path = base + os.sep + rel.replace("/", os.sep)
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            raise IntegrityError(f"{rel} is not the file that was verified (size or type changed)",
                                 where=str(folder), hint="pull the batch again")
        if stat.S_IMODE(st.st_mode) != CACHE_MODE:
            os.chmod(path, CACHE_MODE)  # changes ctime only: the state entry keys on inode, mtime, size
        _put_object(odb_dir, link, path, md5, size, made)
        killpoint.reached(f"{step}:cache-object")
        # `dvc add` also records each cache object, but DVC never hashes a read-only object (its
        # LocalHashFileDB.check trusts mode 0444), so those 70,000 rows would only cost time.
        items.append((path, md5, _info(st)))
        mtimes[path] = st.st_mtime
        lines.append(_meta_line(rel, st))
        total += size
    listing = dir_object_bytes(md5s)
    dir_md5 = md5_bytes(listing) + ".dir"
    dir_obj = _write_object(odb_dir, dir_md5, listing)
    items.append((dir_obj, dir_md5, _info(os.stat(dir_obj))))
    killpoint.reached(f"{step}:after-cache")
    _record_state(repo, items, base, mtimes)
    dvc_file = folder.with_name(folder.name + ".dvc")
    text = dvc_file_text(folder.name, dir_md5, total, len(md5s))
    with atomic_write_path(dvc_file) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Added(dvc_file, dir_md5, len(md5s), total), lines


# --- reading what DVC recorded ------------------------------------------------------------------------

def read_dvc_file(dvc_file: Path) -> dict[str, Any]:
    """The output a batch's .dvc file records (md5 of its .dir object, size, nfiles, path): dvcrepo.recorded_out,
    the one reader of .dvc files, or RepositoryError when it records no folder."""
    from pose_factory.dataset.dvcrepo import damaged_dvc_file_error, recorded_out

    out = recorded_out(dvc_file)
    if out is None or not out["md5"].endswith(".dir"):
        raise damaged_dvc_file_error(dvc_file)
    return out


def object_path(odb_dir: str, oid: str) -> str:
    """Where DVC keeps an object in a cache (or remote) folder laid out as files/md5/xx/rest."""
    return f"{odb_dir}{os.sep}{oid[:2]}{os.sep}{oid[2:]}"


def read_listing(data: bytes, where: str) -> Md5s:
    """{rel path: (0, md5)} from a .dir object's bytes (sizes are not in it)."""
    from pose_factory.core.errors import RepositoryError

    try:
        rows = json.loads(data)
        return {str(row["relpath"]): (0, str(row["md5"])) for row in rows}
    except (ValueError, KeyError, TypeError):
        raise RepositoryError("a .dir object in the DVC cache is damaged", where=where,
                              hint="delete it and run `pose-sync fetch` (it is fetched again)") from None


# --- seals: what status reads instead of asking DVC -------------------------------------------------------

def _seal_path(seal_dir: Path, batch_id: str) -> Path:
    return seal_dir / f"{batch_id}.json"


def seal(seal_dir: Path, folder: Path, dir_md5: str, md5s: Md5s, lines: list[str] | None = None) -> None:
    """Record that the folder now matches the .dvc file recording dir_md5: its folders and files as they are.

    lines: the files' `_meta_line`s when the caller has just stat-ed them all.
    """
    rels = sorted(md5s)
    if lines is None:
        lines = [_meta_line(rel, os.lstat(os.path.join(folder, rel))) for rel in rels]
    document = {"version": SEAL_VERSION, "dir_md5": dir_md5, "files": len(rels),
                "folders": _folder_marks(folder, _sealable_folders(rels)), "meta_sha256": _meta_digest(lines)}
    with atomic_write_path(_seal_path(seal_dir, folder.name)) as tmp:
        tmp.write_bytes(json.dumps(document).encode())


def unseal(seal_dir: Path, batch_id: str) -> None:
    """Forget a seal (before changing the folder, or when it no longer says anything)."""
    _seal_path(seal_dir, batch_id).unlink(missing_ok=True)


def _seal_holds(seal_dir: Path, folder: Path) -> dict[str, Any] | None:
    """The seal of the folder's batch when every folder it names is as it was sealed, else None."""
    try:
        document = json.loads(_seal_path(seal_dir, folder.name).read_bytes())
        if not isinstance(document, dict) or document.get("version") != SEAL_VERSION:
            return None  # damaged: the folder is then asked of DVC, and the seal written again
        for rel, ino, mtime_ns in document["folders"]:
            st = os.stat(os.path.join(folder, rel) if rel else folder)
            if st.st_ino != ino or st.st_mtime_ns != mtime_ns:
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return document


def sealed_for_any(seal_dir: Path, folder: Path) -> str | None:
    """The .dir md5 of the version the folder was sealed with, if its folders are as they were then."""
    document = _seal_holds(seal_dir, folder)
    return document["dir_md5"] if document else None


def sealed(seal_dir: Path, folder: Path, dir_md5: str, *, deep: bool = False) -> bool:
    """Whether the folder is as it was sealed for this .dir: no file added, removed, renamed or replaced.

    Shallow (the default): every folder of the batch still has the inode and mtime it had, a few `stat`
    calls whatever the number of files (adding, removing or renaming a file changes its folder's mtime).
    Deep: also every file's inode, mtime and size, what `dvc status` compares (one `lstat` per file, no
    read): it also sees a file written in place, which needs its read-only bit cleared first.
    """
    document = _seal_holds(seal_dir, folder)
    if document is None or document.get("dir_md5") != dir_md5:
        return False
    if not deep:
        return True
    lines: list[str] = []
    pending = [("", str(folder))]
    try:
        while pending:
            prefix, path = pending.pop()
            with os.scandir(path) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        pending.append((prefix + entry.name + "/", entry.path))
                    else:
                        lines.append(_meta_line(prefix + entry.name, entry.stat(follow_symlinks=False)))
    except OSError:
        return False
    return len(lines) == document["files"] and _meta_digest(lines) == document["meta_sha256"]
