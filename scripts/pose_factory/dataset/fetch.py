"""`pose-sync fetch`: bring the batch versions this commit records from the DVC remote, at transfer speed.

What `dvc pull` does for the batches (fetch the objects the .dvc files name into DVC's cache, check
them out), with the per-file work moved out of Python's way: rclone copies every missing object in one
run (the list of content-addressed paths is read from the `.dir` objects), each object is hashed once
(md5 against its name) on its way into the cache, and each batch is checked out by linking its files in
one loop into a folder that is swapped into place whole, with DVC's state and a seal recorded, so plain
`dvc pull`, `dvc status` and pose-sync's `status` afterwards find nothing to do and hash nothing.

Crash-safe like pull: downloads land in `data/raw/.pose-sync/fetch/objects/` and enter the cache only
verified and read-only (DVC's mark of a trusted object); a batch folder is built beside the mirror and
appears by one rename (swap_dir), so a killed fetch leaves each batch as it was or complete; a rerun
removes the leftovers and goes on.
"""

from __future__ import annotations

import os
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pose_factory.bucket import rclone
from pose_factory.bucket.backends import ObjectMissingError, run_parallel
from pose_factory.core import contract, killpoint
from pose_factory.core.errors import IntegrityError, RemoteObjectError, RepositoryError, StorageError
from pose_factory.core.fsutil import path_md5, recover_swap, remove_tree, swap_dir
from pose_factory.core.progress import Progress
from pose_factory.core.settings import Settings
from pose_factory.dataset import dvccache, dvcremote, dvcrepo, journal

FETCH_JSON_VERSION = 1


@dataclass
class FetchedBatch:
    batch_id: str
    action: str  # fetched | checked-out | up-to-date
    path: str
    files: int = 0
    objects_downloaded: int = 0


@dataclass
class FetchReport:
    batches: list[FetchedBatch] = field(default_factory=list)
    engine: str = "rclone"
    remote: str = ""
    objects_downloaded: int = 0
    cache_type_set: str | None = None  # set in .dvc/config.local because none was configured (a fresh clone)

    def as_json(self) -> dict[str, Any]:
        return {"version": FETCH_JSON_VERSION, "engine": self.engine, "remote": self.remote,
                "objects_downloaded": self.objects_downloaded, "cache_type_set": self.cache_type_set,
                "batches": [asdict(b) for b in self.batches]}


@dataclass
class _Target:
    batch_id: str
    dvc_file: Path
    folder: Path
    dir_md5: str
    size: int
    files: dvccache.Md5s | None = None  # rel -> (0, md5), from the .dir object


def _targets(settings: Settings, batch_ids: list[str] | None) -> list[_Target]:
    found: dict[str, Path] = {}
    for place in (settings.mirror_dir, settings.archive_dir):
        if place.is_dir():
            for dvc_file in sorted(place.glob("*.dvc")):
                found.setdefault(dvc_file.name.removesuffix(".dvc"), dvc_file)
    if batch_ids:
        missing = [b for b in batch_ids if b not in found]
        if missing:
            raise RepositoryError(f"{missing[0]} has no .dvc file in this commit: there is no version of it to fetch",
                                  where=str(settings.mirror_dir / f"{missing[0]}.dvc"),
                                  hint="`pose-sync status` lists the batches; a pruned batch's tombstone names the "
                                       "commit to `git checkout` first")
        found = {b: found[b] for b in batch_ids}
    targets = []
    for batch_id, dvc_file in found.items():
        record = dvccache.read_dvc_file(dvc_file)
        targets.append(_Target(batch_id, dvc_file, dvc_file.with_name(batch_id), record["md5"],
                               int(record.get("size") or 0)))
    return targets


def _ensure_cache_type(settings: Settings) -> str | None:
    """A fresh clone has no .dvc/config.local: set the link type `pose-sync init` would, else DVC copies."""
    if dvcrepo.config_value(settings.root, "cache", "type"):
        return None
    chosen = dvcrepo.cache_type(settings.root)
    with dvcrepo.open_repo(settings.root) as repo, repo.config.edit("local") as mine:
        mine["cache"]["type"] = chosen
    return chosen


def _trusted(path: str) -> bool:
    """An object DVC would use without hashing it: present, regular, read-only (LocalHashFileDB.check)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == dvccache.CACHE_MODE


def _object_error(oid: str, where: str, *, damaged: bool) -> RemoteObjectError:
    """The error for an object the remote lacks or holds damaged; fetch() adds the .dir objects to its hint."""
    return RemoteObjectError(oid, damaged=damaged, where=where, hint=dvcremote.repair_hint([oid] if damaged else []))


def _install(odb_dir: str, oid: str, downloaded: str, where: str, made: set[str] | None = None) -> None:
    """Move a downloaded object into the cache once its md5 is its name; read-only, as DVC keeps it.
    Paths are strings: this runs once per object (70,000 pathlib joins cost a second). `made` holds the cache
    folders known to exist (256 of them for any number of objects): one makedirs each, not one per object."""
    if path_md5(downloaded) != oid.removesuffix(".dir"):
        os.unlink(downloaded)
        raise _object_error(oid, where, damaged=True)
    os.chmod(downloaded, dvccache.CACHE_MODE)
    target = dvccache.object_path(odb_dir, oid)
    folder = os.path.dirname(target)
    if made is None or folder not in made:
        os.makedirs(folder, exist_ok=True)
        if made is not None:
            made.add(folder)
    try:
        os.replace(downloaded, target)
    except OSError:  # the cache on another filesystem
        import shutil

        shutil.copyfile(downloaded, target + ".tmp")
        os.chmod(target + ".tmp", dvccache.CACHE_MODE)
        os.replace(target + ".tmp", target)
        os.unlink(downloaded)


def _download(remote: dvcremote.DvcRemote, settings: Settings, oids: list[str], objects: Path, odb_dir: str,
              engine: str, progress: Progress, total_bytes: int) -> None:
    """Copy these objects from the remote into the cache: each is downloaded into objects/<xx>/<rest> and
    installed (md5 checked, read-only, moved in): by the boto3 thread that downloaded it, or after rclone."""
    relative = [f"{oid[:2]}/{oid[2:]}" for oid in oids]
    base = str(objects) + os.sep
    made: set[str] = set()

    def install(rel: str) -> None:
        _install(odb_dir, rel.replace("/", ""), base + rel.replace("/", os.sep), remote.url, made)
        killpoint.reached("fetch:object")

    with progress.task("fetch objects", total_bytes, "bytes") as bar:
        if engine == "rclone":
            source, env = remote.rclone_source(settings)
            rclone.transfer(source, env, objects, relative, bar, total_bytes, settings=settings, step="fetch")
            installed: set[str] = set()  # see pull._Arrived: rclone's objects are installed once it ends
        else:
            def one(rel: str) -> None:
                killpoint.reached("fetch:transfer")
                try:
                    remote.storage.download_file(remote.prefix + rel, objects / rel)
                except ObjectMissingError:
                    raise _object_error(rel.replace("/", ""), remote.url, damaged=False) from None
                install(rel)

            run_parallel(one, relative, settings.concurrency * 2)
            bar.advance(total_bytes)
            installed = set(relative)

    def install_present(rels: list[str]) -> None:
        for rel in rels:
            if not os.path.isfile(base + rel.replace("/", os.sep)):
                raise _object_error(rel.replace("/", ""), remote.url, damaged=False)
            install(rel)

    rest = [rel for rel in relative if rel not in installed]
    # Reading and md5 release the GIL: objects of some size are checked in two threads once rclone has
    # ended and the cores are free (contract.MD5_THREADED_AVERAGE; 2,000 objects of 41 KB: 0.16 -> 0.11 s).
    if len(rest) >= 8 and total_bytes / max(1, len(relative)) >= contract.MD5_THREADED_AVERAGE:
        chunks = [rest[i:i + 64] for i in range(0, len(rest), 64)]
        run_parallel(install_present, chunks, min(2, os.cpu_count() or 1))
    else:
        install_present(rest)


def _fetch_dir_objects(remote: dvcremote.DvcRemote | None, odb_dir: str, targets: list[_Target],
                       scratch: Path) -> None:
    for target in targets:
        path = dvccache.object_path(odb_dir, target.dir_md5)
        if not _trusted(path):
            if remote is None:
                raise RepositoryError(f"the list of {target.batch_id}'s files is not in the DVC cache and there "
                                      "is no DVC remote pose-sync can read", where=path,
                                      hint="run `pose-sync init` (or `dvc pull`)")
            tmp = scratch / target.dir_md5
            try:
                data = remote.storage.read_bytes(remote.key(target.dir_md5))
            except ObjectMissingError:
                raise RepositoryError(f"the DVC remote does not hold the version of {target.batch_id} this commit "
                                      "records (it was never pushed)", where=remote.url,
                                      hint="`dvc push` it from the machine that pulled it") from None
            scratch.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
            _install(odb_dir, target.dir_md5, str(tmp), remote.url)
        with open(path, "rb") as handle:
            target.files = dvccache.read_listing(handle.read(), path)


def _checkout(repo: Any, target: _Target, odb_dir: str, building: Path, seal_dir: Path) -> None:
    """Build the batch folder from the cache beside the mirror, swap it in, record DVC's state and the seal."""
    assert target.files is not None
    remove_tree(building)
    building.mkdir(parents=True)
    link = dvccache._Link(list(repo.cache.local.cache_types), odb_dir, str(building))  # noqa: SLF001
    base = str(building)
    made: set[str] = {base}
    for rel, (_, md5) in sorted(target.files.items()):
        dest = base + os.sep + rel.replace("/", os.sep)
        parent = os.path.dirname(dest)
        if parent not in made:
            os.makedirs(parent, exist_ok=True)
            made.add(parent)
        link.make(dvccache.object_path(odb_dir, md5), dest)
        killpoint.reached("fetch:link")
    dvcrepo.ensure_gitignored(target.folder.parent, target.batch_id)
    dvccache.unseal(seal_dir, target.batch_id)
    swap_dir(building, target.folder, step="fetch")
    killpoint.reached("fetch:after-swap")
    record_checkout(repo, target.folder, target.files, target.dir_md5, seal_dir)


def record_checkout(repo: Any, folder: Path, files: dvccache.Md5s, dir_md5: str, seal_dir: Path) -> None:
    """What `dvc checkout` records for a folder it made (state per file, the folder as its link), and the seal."""
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.utils import _tokenize_mtimes
    from dvc_objects.fs.system import inode

    base = str(folder)
    items, mtimes, lines = [], {}, []
    for rel, (_, md5) in sorted(files.items()):
        path = base + os.sep + rel.replace("/", os.sep)
        st = os.lstat(path)
        items.append((path, HashInfo("md5", md5), {"ino": st.st_ino, "mtime": st.st_mtime, "size": st.st_size}))
        mtimes[path] = st.st_mtime
        lines.append(dvccache._meta_line(rel, st))  # noqa: SLF001
    repo.state.save_many(items, repo.cache.local.fs)
    repo.state.set_link(base, inode(base), _tokenize_mtimes(mtimes))
    dvccache.seal(seal_dir, folder, dir_md5, files, lines)


def fetch(settings: Settings, batch_ids: list[str] | None = None, *, engine: str = "auto", force: bool = False,
          progress: Progress | None = None) -> FetchReport:
    """Fill DVC's cache from the DVC remote and check out every batch version this commit records."""
    from pose_factory.dataset.pull import resolve_engine

    dvcrepo.require_repository(settings.root)
    progress = progress or Progress(enabled=False)
    report = FetchReport()
    with journal.locked(settings, "fetch"):
        journal.settle(settings)
        targets = _targets(settings, batch_ids)
        report.cache_type_set = _ensure_cache_type(settings) if targets else None
        remote = dvcremote.default_remote(settings)
        report.remote = remote.url if remote else ""
        if remote is not None:
            report.engine = resolve_engine(engine, remote.storage)
        work = settings.layout.fetch_dir
        remove_tree(work)  # what a killed fetch left: nothing in it was trusted yet
        with dvcrepo.open_repo(settings.root) as repo:
            odb_dir = repo.cache.local.path
            todo = []
            for target in targets:
                recover_swap(target.folder)
                if not force and dvccache.sealed(settings.seal_dir, target.folder, target.dir_md5):
                    report.batches.append(FetchedBatch(target.batch_id, "up-to-date", _rel(settings, target.folder)))
                    continue
                todo.append(target)
            _fetch_dir_objects(remote, odb_dir, todo, work / "dirs")
            killpoint.reached("fetch:after-dir-objects")
            todo, in_step = _refuse_changed(settings, todo, force)
            for target in in_step:
                assert target.files is not None
                record_checkout(repo, target.folder, target.files, target.dir_md5, settings.seal_dir)
                report.batches.append(FetchedBatch(target.batch_id, "up-to-date", _rel(settings, target.folder),
                                                   len(target.files)))
            needed: dict[str, None] = {}
            for target in todo:
                assert target.files is not None
                for _, md5 in target.files.values():
                    if md5 not in needed and not _trusted(dvccache.object_path(odb_dir, md5)):
                        needed[md5] = None
            wanted = list(needed)
            if wanted:
                if remote is None:
                    raise RepositoryError(f"{len(wanted)} object(s) are missing from the DVC cache and there is no "
                                          "DVC remote pose-sync can read", where=settings.root.as_posix(),
                                          hint="run `pose-sync init`, or `dvc pull` for another kind of remote")
                objects = work / "objects"
                objects.mkdir(parents=True, exist_ok=True)
                sizes = sum(t.size for t in todo)
                try:
                    _download(remote, settings, wanted, objects, odb_dir, report.engine, progress, sizes)
                except StorageError as exc:
                    exc.hint = "run `pose-sync fetch` again (it resumes); `dvc pull` is the other way"
                    raise
                except RemoteObjectError as exc:  # name the .dir object of each version that lists it, too
                    listing = [t.dir_md5 for t in todo
                               if t.files and any(md5 == exc.oid for _, md5 in t.files.values())]
                    exc.hint = dvcremote.repair_hint([exc.oid, *listing] if exc.damaged else listing)
                    raise
                report.objects_downloaded = len(wanted)
            killpoint.reached("fetch:after-objects")
            by_dvc = dvccache.cache_unsupported(repo) is not None
            for target in todo:
                assert target.files is not None
                fetched = sum(1 for _, md5 in target.files.values() if md5 in needed)
                with progress.task(f"check out {target.batch_id}", len(target.files)) as bar:
                    if by_dvc:  # the cache is filled; DVC links the files as its settings say
                        dvccache.unseal(settings.seal_dir, target.batch_id)
                        dvcrepo.checkout(settings.root, [target.dvc_file], force=True)
                    else:
                        _checkout(repo, target, odb_dir, work / "checkout" / target.batch_id, settings.seal_dir)
                    bar.advance(len(target.files))
                report.batches.append(FetchedBatch(target.batch_id, "fetched" if fetched else "checked-out",
                                                   _rel(settings, target.folder), len(target.files), fetched))
        remove_tree(work)
    report.batches.sort(key=lambda b: b.batch_id)
    return report


def _refuse_changed(settings: Settings, targets: list[_Target], force: bool) -> tuple[list[_Target], list[_Target]]:
    """(batches to check out, batches already in step) of those whose seal does not hold.

    A folder sealed for another version (after a `git checkout` of another commit) holds data that is in
    the cache: it is replaced, as `dvc checkout` replaces it. A folder DVC finds in step only gets its seal.
    A folder with files changed by hand is not replaced unless --force.
    """
    unsealed = [t for t in targets if t.folder.exists() and not dvccache.sealed_for_any(settings.seal_dir, t.folder)]
    problems = dvcrepo.workspace_status(settings.root, [t.dvc_file for t in unsealed]) if unsealed else {}
    keep, in_step = [], []
    for target in targets:
        if target in unsealed:
            problem = problems.get(target.dvc_file)
            if problem is None and not force:
                in_step.append(target)
                continue
            if problem == "modified" and not force:
                raise IntegrityError(f"{target.batch_id} differs from the version its .dvc file records (files changed "
                                 "in place, added or removed)", where=str(target.folder),
                                 hint=f"`pose-sync pull {target.batch_id} --repair` restores a pulled batch; "
                                      "`pose-sync fetch --force` replaces the folder with the recorded version")
        keep.append(target)
    return keep, in_step


def _rel(settings: Settings, folder: Path) -> str:
    return folder.relative_to(settings.root).as_posix()
